"""The ``asrflow`` command line: one sub-command per pipeline step, plus the pipeline verbs.

Each step's command lives beside its core (``components/<step>/cli.py``) and only forwards
to it; heavy libraries load when a command runs, not when ``--help`` is shown.
"""

from __future__ import annotations

import importlib

import click

from components.progress import setup_logging

# (module, click command attribute): added to the group when the module exists.
COMMANDS = (
    ("components.download.cli", "resolve_revision"),
    ("components.download.cli", "download"),
    ("components.shard.cli", "write_shards"),
    ("components.buckets.cli", "estimate_buckets"),
    ("components.train.cli", "train_tokenizer"),
    ("components.train.cli", "train"),
    ("components.evaluate.cli", "evaluate"),
    ("pipelines.commands", "compile_pipeline"),
    ("pipelines.commands", "run"),
    ("pipelines.commands", "submit"),
    ("pipelines.commands", "schedule"),
)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="asrflow")
def main() -> None:
    """Train NeMo speech-to-text models as a Kubeflow pipeline.

    Each step also runs on its own; it writes card.json in its output directory and prints
    that card as the last line of stdout.
    """
    setup_logging()


for module_name, attribute in COMMANDS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        continue
    main.add_command(getattr(module, attribute))

"""The ``asrflow`` command line: one sub-command per pipeline step, plus the pipeline verbs.

Each step's command lives beside its core (``components/<step>/cli.py``) and only forwards
to it; heavy libraries load when a command runs, not when ``--help`` is shown.

Errors: the group (:func:`components.cli_errors.asrflow_group`) turns the project's own
errors and the usual network, storage and file errors into one line, ``Error: …``, and exit
status 1 (click's usage errors keep 2). ``asrflow --debug …`` (or ``ASRFLOW_DEBUG=1``)
re-raises the original exception instead, so Python prints its traceback.
"""

from __future__ import annotations

import importlib

from components import cli_errors

# (module, click command attribute): added to the group when the module exists.
COMMANDS = (
    ("components.download.cli", "resolve_revision"),
    ("components.download.cli", "download"),
    ("components.shard.cli", "write_shards"),
    ("components.buckets.cli", "estimate_buckets"),
    ("components.train.cli", "train_tokenizer"),
    ("components.train.cli", "train"),
    ("components.lm.cli", "train_lm"),
    ("components.evaluate.cli", "evaluate"),
    ("pipelines.commands", "compile_pipeline"),
    ("pipelines.commands", "run"),
    ("pipelines.commands", "submit"),
    ("pipelines.commands", "schedule"),
)

# The steps' errors and the libraries', and those of the pipeline verbs.
KNOWN_ERRORS = (
    *cli_errors.KNOWN_ERRORS,
    ("pipelines.remote", "RemoteError"),
    ("pipelines.container_run", "ContainerRunError"),
)


@cli_errors.asrflow_group("asrflow", KNOWN_ERRORS, own_packages=(*cli_errors.OWN_PACKAGES, "pipelines"))
def main() -> None:
    """Train NeMo speech-to-text models as a Kubeflow pipeline.

    Each step also runs on its own; it writes card.json in its output directory and prints
    that card as the last line of stdout. An error ends a command with one line, "Error: …",
    and exit status 1 (2 for a wrong option); add --debug for its traceback.
    """


for module_name, attribute in COMMANDS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        continue
    main.add_command(getattr(module, attribute))

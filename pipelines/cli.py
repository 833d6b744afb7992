"""The ``asrflow`` command line: one sub-command per pipeline step, plus the pipeline verbs.

Each step's command lives beside its core (``components/<step>/cli.py``) and only forwards
to it; heavy libraries load when a command runs, not when ``--help`` is shown.

Errors: the group turns the project's own errors and the usual network, storage and file
errors into one line, ``Error: …``, and exit status 1 (click's usage errors keep 2).
``asrflow --debug …`` (or ``ASRFLOW_DEBUG=1``) re-raises the original exception instead, so
Python prints its traceback.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

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

# The errors that end a command with one line instead of a traceback, as (module, class).
# A class counts only once its module is loaded: a command that never imported a library
# cannot raise its errors, and this keeps `asrflow --help` fast.
KNOWN_ERRORS = (
    # the project's own: the message names the thing and says what is wrong
    ("components.manifest", "ManifestError"),
    ("components.manifest", "RejectThresholdExceeded"),
    ("components.sources", "SourceError"),
    ("components.download.core", "DownloadError"),
    ("components.shard.core", "ShardError"),
    ("components.buckets.core", "BucketError"),
    ("components.train.core", "TrainError"),
    ("components.train.data", "DataError"),
    ("components.train.checkpoints", "CheckpointError"),
    ("components.evaluate.core", "EvaluateError"),
    ("pipelines.remote", "RemoteError"),
    ("pipelines.container_run", "ContainerRunError"),
    # libraries: network, cloud storage and the KFP API
    ("builtins", "ConnectionError"),
    ("builtins", "TimeoutError"),
    ("builtins", "FileNotFoundError"),
    ("builtins", "PermissionError"),
    ("builtins", "IsADirectoryError"),
    ("builtins", "NotADirectoryError"),
    ("urllib3.exceptions", "HTTPError"),
    ("requests.exceptions", "ConnectionError"),
    ("requests.exceptions", "Timeout"),
    ("httpx", "TransportError"),
    ("httpx2", "TransportError"),
    ("huggingface_hub.errors", "HfHubHTTPError"),
    ("google.api_core.exceptions", "GoogleAPIError"),
    ("google.auth.exceptions", "GoogleAuthError"),
    ("kfp_server_api.exceptions", "ApiException"),
)

DEBUG_HINT = "(asrflow --debug … shows the traceback)"


def known_error_types() -> tuple[type[BaseException], ...]:
    """The classes of :data:`KNOWN_ERRORS` whose modules are loaded now."""
    found = []
    for module_name, name in KNOWN_ERRORS:
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def one_line(err: BaseException) -> str:
    """The error as one line.

    The project's messages are written for the user and kept whole (their lines joined by
    "; "); a library's is cut to its first line, after the class name and a hint at --debug.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if type(err).__module__.split(".")[0] in ("components", "pipelines"):
        return "; ".join(lines) or type(err).__name__
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{text} {DEBUG_HINT}"


class AsrflowGroup(click.Group):
    """A click group whose commands end with one ``Error:`` line, or a traceback with --debug."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException as err:
            # A command turned an error into a message; --debug shows what it came from.
            # (A usage error stays one even with --debug.)
            cause = err.__cause__ or err.__context__
            debug = ctx.meta.get("asrflow.debug")
            if debug and cause is not None and not isinstance(err, click.UsageError):
                if not isinstance(cause, click.ClickException):
                    raise cause  # noqa: B904 (the original exception, with its own traceback)
            raise
        except Exception as err:
            if ctx.meta.get("asrflow.debug") or not isinstance(err, known_error_types()):
                raise
            raise click.ClickException(one_line(err)) from err


@click.group(
    cls=AsrflowGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(package_name="asrflow")
@click.option(
    "--debug",
    is_flag=True,
    envvar="ASRFLOW_DEBUG",
    help="Show the traceback of an error (and debug logs of asrflow) instead of one line "
    "[env: ASRFLOW_DEBUG].",
)
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """Train NeMo speech-to-text models as a Kubeflow pipeline.

    Each step also runs on its own; it writes card.json in its output directory and prints
    that card as the last line of stdout. An error ends a command with one line, "Error: …",
    and exit status 1 (2 for a wrong option); add --debug for its traceback.
    """
    ctx.meta["asrflow.debug"] = debug
    setup_logging(debug=debug)


for module_name, attribute in COMMANDS:
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise
        continue
    main.add_command(getattr(module, attribute))

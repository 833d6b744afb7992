"""asrflow's click group: errors as one line, ``--debug`` for the traceback, logging set up.

Errors: the group turns the project's own errors and the usual network, storage and file
errors into one line, ``Error: …``, and exit status 1 (click's usage errors keep 2).
``--debug`` (or ``ASRFLOW_DEBUG=1``) re-raises the original exception instead, so Python
prints its traceback.

``asrflow`` (its steps and the pipeline verbs) and ``python -m components.train`` (the
training commands, as KFP tasks and DDP ranks run them) are groups made by
:func:`asrflow_group`; each names the errors it knows.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from components.progress import setup_logging

# The errors that end a command with one line instead of a traceback, as (module, class).
# A class counts only once its module is loaded: a command that never imported a library
# cannot raise its errors, and this keeps `asrflow --help` fast.
KNOWN_ERRORS = (
    # the project's own: the message names the thing and says what is wrong
    ("components.manifest", "ManifestError"),
    ("components.manifest", "RejectThresholdExceeded"),
    ("components.items", "SourceError"),
    ("components.download.errors", "DownloadError"),
    ("components.shard.errors", "ShardError"),
    ("components.buckets.errors", "BucketError"),
    ("components.train.errors", "TrainError"),
    ("components.train.data", "DataError"),
    ("components.train.checkpoints", "CheckpointError"),
    ("components.evaluate.errors", "EvaluateError"),
    ("components.lm.errors", "LmError"),
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

OWN_PACKAGES = ("components",)
"""The project's packages: their errors' messages are written for the user and kept whole."""

DEBUG_HINT = "(asrflow --debug … shows the traceback)"

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def known_error_types(known: Sequence[tuple[str, str]] = KNOWN_ERRORS) -> tuple[type[BaseException], ...]:
    """The classes of ``known`` whose modules are loaded now."""
    found = []
    for module_name, name in known:
        module = sys.modules.get(module_name)
        cls = getattr(module, name, None) if module is not None else None
        if isinstance(cls, type) and issubclass(cls, BaseException):
            found.append(cls)
    return tuple(found)


def one_line(err: BaseException, own_packages: Sequence[str] = OWN_PACKAGES) -> str:
    """The error as one line.

    The project's messages (errors from ``own_packages``) are written for the user and kept
    whole (their lines joined by "; "); a library's is cut to its first line, after the class
    name and a hint at --debug.
    """
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if type(err).__module__.split(".")[0] in own_packages:
        return "; ".join(lines) or type(err).__name__
    text = f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__
    return f"{text} {DEBUG_HINT}"


class AsrflowGroup(click.Group):
    """A click group whose commands end with one ``Error:`` line, or a traceback with --debug.

    Args:
        known_errors: the (module, class) pairs that become one line.
        own_packages: the packages whose errors' messages are kept whole.
    """

    def __init__(
        self,
        *args: Any,
        known_errors: Sequence[tuple[str, str]] = KNOWN_ERRORS,
        own_packages: Sequence[str] = OWN_PACKAGES,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.known_errors = tuple(known_errors)
        self.own_packages = tuple(own_packages)

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
            if ctx.meta.get("asrflow.debug") or not isinstance(err, known_error_types(self.known_errors)):
                raise
            raise click.ClickException(one_line(err, self.own_packages)) from err


def asrflow_group(
    name: str,
    known_errors: Sequence[tuple[str, str]] = KNOWN_ERRORS,
    own_packages: Sequence[str] = OWN_PACKAGES,
) -> Callable[[Callable[[], None]], AsrflowGroup]:
    """Make a group of a callback: one-line errors, ``--debug``, ``--version``, logging set up.

    The callback's docstring is the group's help; it takes no arguments.

    Args:
        name: the group's name (the program name in its usage line).
        known_errors: the (module, class) pairs that become one line.
        own_packages: the packages whose errors' messages are kept whole.
    """

    def decorate(callback: Callable[[], None]) -> AsrflowGroup:
        @click.group(
            name,
            cls=AsrflowGroup,
            known_errors=known_errors,
            own_packages=own_packages,
            context_settings=CONTEXT_SETTINGS,
            help=inspect.cleandoc(callback.__doc__ or ""),
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
        def group(ctx: click.Context, debug: bool) -> None:
            ctx.meta["asrflow.debug"] = debug
            setup_logging(debug=debug)
            callback()

        return group

    return decorate

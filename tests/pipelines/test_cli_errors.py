"""The ``asrflow`` group's error handling (issue 12, item 4) and ``asrflow submit`` to a KFP
API that cannot be reached.

An error is one ``Error:`` line and exit status 1 (2 for click's usage errors); ``asrflow
--debug`` (or ``ASRFLOW_DEBUG=1``) shows the traceback instead; an exception the group does
not know (a bug) keeps its traceback.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from components.cli_errors import DEBUG_HINT
from pipelines import remote
from pipelines.cli import main
from tests.components.test_errors import closed_port, debug_traceback, one_error_line

ASRFLOW = str(Path(sys.executable).with_name("asrflow"))


@pytest.fixture
def silent_host() -> Iterator[str]:
    """A host that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_submit_to_a_host_that_refuses() -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    result = CliRunner().invoke(main, ["submit", "--host", host])
    line = one_error_line(result)
    assert result.exit_code == 1
    assert f"cannot reach the KFP API at {host}: " in line and "Connection refused" in line
    assert "check --host/$KFP_HOST" in line
    debug_traceback(CliRunner().invoke(main, ["--debug", "submit", "--host", host]), remote.RemoteError)


def test_submit_and_schedule_to_a_host_that_does_not_answer(
    silent_host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote, "REACH_TIMEOUT_S", 0.5)
    for argv in (["submit"], ["schedule", "--cron", "0 0 3 * * 0"]):
        line = one_error_line(CliRunner().invoke(main, [*argv, "--host", silent_host]))
        assert f"cannot reach the KFP API at {silent_host}: no answer in 0.5 s" in line


def test_an_api_error_after_the_host_answered_is_one_line() -> None:
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import MaxRetryError

    with pytest.raises(remote.RemoteError, match=r"^the KFP API at http://h answered 403 Forbidden; sign in"):
        with remote.api_errors("http://h"):
            raise ApiException(status=403, reason="Forbidden")
    with pytest.raises(remote.RemoteError, match=r"^cannot reach the KFP API at http://h: gone; check"):
        with remote.api_errors("http://h"):
            raise MaxRetryError(None, "/apis", reason="gone")  # type: ignore[arg-type]


def test_the_traceback_is_printed_with_debug_only() -> None:
    """A real process: one line on stderr; the whole traceback with --debug or ASRFLOW_DEBUG."""
    host = f"http://127.0.0.1:{closed_port()}"
    plain = subprocess.run([ASRFLOW, "submit", "--host", host], capture_output=True, text=True, check=False)
    assert plain.returncode == 1 and plain.stdout == ""
    assert plain.stderr.strip().count("\n") == 0 and plain.stderr.startswith("Error: cannot reach")
    for command, env in (
        ([ASRFLOW, "--debug", "submit", "--host", host], os.environ),
        ([ASRFLOW, "submit", "--host", host], {**os.environ, "ASRFLOW_DEBUG": "1"}),
    ):
        debug = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
        assert debug.returncode == 1
        assert debug.stderr.startswith("Traceback (most recent call last)")
        assert "ConnectionRefusedError" in debug.stderr  # the cause, down in the library
        assert debug.stderr.strip().splitlines()[-1].startswith("pipelines.remote.RemoteError: cannot reach")


@pytest.fixture
def raising_command() -> Iterator[list[BaseException]]:
    """An ``asrflow raise`` command that raises what the test puts in the list."""
    to_raise: list[BaseException] = []

    @click.command("raise")
    def command() -> None:
        raise to_raise[0]

    main.add_command(command)
    yield to_raise
    main.commands.pop("raise")


def test_known_library_errors_become_one_line(raising_command: list[BaseException]) -> None:
    raising_command.append(ConnectionRefusedError(111, "Connection refused"))
    line = one_error_line(CliRunner().invoke(main, ["raise"]))
    assert line == f"Error: ConnectionRefusedError: [Errno 111] Connection refused {DEBUG_HINT}"
    debug_traceback(CliRunner().invoke(main, ["--debug", "raise"]), ConnectionRefusedError)


def test_project_errors_without_a_handler_become_one_line(raising_command: list[BaseException]) -> None:
    from components.buckets.core import BucketError

    raising_command.append(BucketError("data/tarred: no manifest\n(write-shards writes one)"))
    line = one_error_line(CliRunner().invoke(main, ["raise"]))
    assert line == "Error: data/tarred: no manifest; (write-shards writes one)"


def test_a_command_converted_error_shows_its_cause_with_debug(raising_command: list[BaseException]) -> None:
    try:
        try:
            raise KeyError("inner")
        except KeyError:
            raise click.ClickException("what went wrong") from None
    except click.ClickException as err:
        raising_command.append(err)
    assert one_error_line(CliRunner().invoke(main, ["raise"])) == "Error: what went wrong"
    text = debug_traceback(CliRunner().invoke(main, ["--debug", "raise"]), KeyError)
    assert "KeyError: 'inner'" in text


def test_unknown_errors_keep_their_traceback(raising_command: list[BaseException]) -> None:
    raising_command.append(ZeroDivisionError("a bug"))
    result = CliRunner().invoke(main, ["raise"])
    assert isinstance(result.exception, ZeroDivisionError)
    assert "Traceback" in "".join(traceback.format_exception(*result.exc_info))


def test_usage_errors_keep_exit_status_2() -> None:
    result = CliRunner().invoke(main, ["--debug", "compile"])
    assert result.exit_code == 2 and "Missing option '--out'" in result.output

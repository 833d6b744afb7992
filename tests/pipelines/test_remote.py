"""``asrflow submit`` and ``asrflow schedule`` through the real ``kfp.Client`` over HTTP.

No KFP API server can run here (it needs a cluster), so a small server on 127.0.0.1 stands
in for it: it records the v2beta1 REST calls and answers with ids. What is checked is what
a real server would receive.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from click.testing import CliRunner

from pipelines import placement
from pipelines.cli import main


class RecordingKfpApi(BaseHTTPRequestHandler):
    calls: list[tuple[str, str, dict]] = []

    def _reply(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.calls.append(("GET", self.path, {}))
        self._reply({})  # no experiment of that name yet

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
        self.calls.append(("POST", self.path, body))
        if self.path.endswith("/experiments"):
            self._reply({"experiment_id": "exp-1", "display_name": body["display_name"]})
        elif self.path.endswith("/recurringruns"):
            self._reply({"recurring_run_id": "recurring-1"})
        elif self.path.endswith("/runs"):
            self._reply({"run_id": "run-1"})
        else:
            self.send_error(404)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def kfp_api() -> Iterator[tuple[str, list]]:
    RecordingKfpApi.calls = []
    server = HTTPServer(("127.0.0.1", 0), RecordingKfpApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", RecordingKfpApi.calls
    server.shutdown()


def posted(calls: list, suffix: str) -> dict:
    (body,) = [body for method, path, body in calls if method == "POST" and path.endswith(suffix)]
    return body


def train_selector(body: dict) -> dict:
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"][
        "executors"
    ]
    return executors["exec-train"]["nodeSelector"]["labels"]


def test_submit_sends_the_compiled_pipeline_and_arguments(kfp_api) -> None:
    host, calls = kfp_api
    result = CliRunner().invoke(
        main,
        ["submit", "--host", host, "--gpu", "a100", "--run-name", "r1", "--param", "data_root=gs://b/asrflow",
         "--param", "max_steps=5000"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "started run run-1" in result.output
    assert posted(calls, "/experiments")["display_name"] == "asrflow"
    run = posted(calls, "/runs")
    assert run["display_name"] == "r1" and run["experiment_id"] == "exp-1"
    assert run["service_account"] == placement.RUNNER_SERVICE_ACCOUNT
    assert run["runtime_config"]["parameters"] == {"data_root": "gs://b/asrflow", "max_steps": 5000}
    assert train_selector(run)[placement.ACCELERATOR_LABEL] == "nvidia-tesla-a100"


def test_schedule_creates_a_recurring_run_without_catchup(kfp_api) -> None:
    host, calls = kfp_api
    result = CliRunner().invoke(
        main,
        ["schedule", "--host", host, "--cron", "0 0 3 * * 0", "--champion", "conformer",
         "--param", "data_root=gs://b/asrflow"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    recurring = posted(calls, "/recurringruns")
    assert recurring["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert int(recurring["max_concurrency"]) == 1
    assert recurring["no_catchup"] is True
    assert recurring["runtime_config"]["parameters"]["champion_name"] == "conformer"
    assert train_selector(recurring)[placement.ACCELERATOR_LABEL] == "nvidia-tesla-v100"


def test_bad_param_is_a_clear_error() -> None:
    result = CliRunner().invoke(main, ["submit", "--host", "http://127.0.0.1:9", "--param", "oops"])
    assert result.exit_code != 0
    assert "expected key=value" in result.output

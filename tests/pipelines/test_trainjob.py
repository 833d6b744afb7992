"""Multi-node training: the TrainJob object, its deterministic name, and create / re-attach /
replace through the real kubernetes client.

No Kubernetes API server runs here, so a small server on 127.0.0.1 stands in for the
TrainJob endpoints: it stores objects by name, answers 404 for unknown ones and records the
calls. The object itself is validated against the TrainJob CRD schema in test_manifests.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from pipelines import placement, trainjob

NAMESPACE = "asrflow"
COLLECTION = f"/apis/{trainjob.GROUP}/{trainjob.VERSION}/namespaces/{NAMESPACE}/{trainjob.PLURAL}"


class TrainJobApi(BaseHTTPRequestHandler):
    objects: dict[str, dict] = {}
    calls: list[tuple[str, str]] = []

    def _reply(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _name(self) -> str | None:
        match = re.fullmatch(re.escape(COLLECTION) + r"/([a-z0-9-]+)", self.path.split("?")[0])
        return match.group(1) if match else None

    def _not_found(self) -> None:
        self._reply(
            404,
            {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404},
        )

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.calls.append(("GET", self.path))
        name = self._name()
        if name in self.objects:
            self._reply(200, self.objects[name])
        else:
            self._not_found()

    def do_POST(self) -> None:  # noqa: N802
        self.calls.append(("POST", self.path))
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.objects[body["metadata"]["name"]] = body
        self._reply(201, body)

    def do_DELETE(self) -> None:  # noqa: N802
        self.calls.append(("DELETE", self.path))
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._reply(200, self.objects.pop(self._name(), {}))

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def api() -> Iterator[object]:
    from kubernetes import client

    TrainJobApi.objects, TrainJobApi.calls = {}, []
    server = HTTPServer(("127.0.0.1", 0), TrainJobApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    configuration = client.Configuration()
    configuration.host = f"http://127.0.0.1:{server.server_port}"
    yield client.CustomObjectsApi(client.ApiClient(configuration))
    server.shutdown()


def make_job(run_id: str = "run-7", num_nodes: int = 2, gpu: str = "a100"):
    args = [
        "gs://b/tarred",
        "--val",
        "gs://b/dev.json",
        "--run-dir",
        "gs://b/runs/run-7",
        "--precision",
        "bf16-mixed",
    ]
    return trainjob.build_trainjob(
        trainjob.trainjob_name(run_id), NAMESPACE, "train:1", args, num_nodes, gpu, run_id, "peoples_speech"
    )


def test_name_is_deterministic_and_a_valid_dns_label() -> None:
    name = trainjob.trainjob_name("a-very-long-kfp-run-id-0f3c2a9e-0000-4000-8000-000000000000")
    assert name == trainjob.trainjob_name("a-very-long-kfp-run-id-0f3c2a9e-0000-4000-8000-000000000000")
    assert name != trainjob.trainjob_name("another-run")
    assert re.fullmatch(r"[a-z]([-a-z0-9]{0,61}[a-z0-9])?", name)


def test_object_runs_asrflow_train_under_torchrun_on_the_gpu_pool() -> None:
    body = make_job().to_dict()
    trainer = body["spec"]["trainer"]
    assert trainer["command"] == ["torchrun", "--no-python", "asrflow", "train"]
    assert trainer["numNodes"] == 2 and trainer["numProcPerNode"] == 1
    assert trainer["resourcesPerNode"]["limits"] == {"nvidia.com/gpu": "1"}
    assert body["spec"]["runtimeRef"] == {
        "apiGroup": trainjob.GROUP,
        "kind": "TrainingRuntime",
        "name": placement.TRAINING_RUNTIME,
    }
    (patch,) = body["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = replicated["template"]["spec"]["template"]
    assert pod["spec"]["nodeSelector"] == placement.A100_POOL.node_selector
    assert {t["key"] for t in pod["spec"]["tolerations"]} == {t.key for t in placement.A100_POOL.taints}
    assert pod["metadata"]["labels"][placement.RUN_LABEL] == "run-7"
    assert body["metadata"]["labels"][placement.DATASET_LABEL] == "peoples_speech"


@pytest.mark.parametrize("gpu", sorted(placement.GPU_POOLS))
def test_object_requests_the_pools_cpu_memory_and_shm(gpu: str) -> None:
    """Trainer v2.3.0 merges resourcesPerNode into the `node` container
    (pkg/runtime/core/trainingruntime.go:199-229); test_allocatable checks the sum fits."""
    pool = placement.GPU_POOLS[gpu]
    body = make_job(gpu=gpu).to_dict()
    requests = body["spec"]["trainer"]["resourcesPerNode"]["requests"]
    assert requests == {
        "cpu": pool.cpu_request,
        "memory": pool.memory_request,
        placement.GPU_RESOURCE: str(pool.gpus_per_node),
    }
    (patch,) = body["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    (volume,) = replicated["template"]["spec"]["template"]["spec"]["volumes"]
    assert volume["emptyDir"] == {"medium": "Memory", "sizeLimit": placement.SHM_SIZE}


def test_first_attempt_creates_and_a_retry_reattaches(api) -> None:
    job = make_job()
    body, attached = trainjob.create_or_attach(api, job)
    assert not attached and body["metadata"]["name"] == job.metadata.name
    again, attached = trainjob.create_or_attach(api, make_job())
    assert attached
    assert [method for method, _ in TrainJobApi.calls].count("POST") == 1


def test_a_failed_job_from_an_earlier_attempt_is_replaced(api) -> None:
    job = make_job()
    trainjob.create_or_attach(api, job)
    TrainJobApi.objects[job.metadata.name]["status"] = {
        "conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded"}]
    }
    body, attached = trainjob.create_or_attach(api, make_job(), poll_s=0.01)
    assert not attached
    assert [method for method, _ in TrainJobApi.calls][-3:] == ["DELETE", "GET", "POST"]
    assert "status" not in TrainJobApi.objects[job.metadata.name]


def test_wait_for_returns_the_final_state(api) -> None:
    job = make_job()
    trainjob.create_or_attach(api, job)
    polls: list[str] = []

    def complete_on_third_poll(current: dict) -> None:
        polls.append(trainjob.job_state(current))
        if len(polls) == 2:
            TrainJobApi.objects[job.metadata.name]["status"] = {
                "conditions": [{"type": "Complete", "status": "True"}]
            }

    state = trainjob.wait_for(api, job.metadata.name, NAMESPACE, poll_s=0.01, on_poll=complete_on_third_poll)
    assert state == "Complete"
    assert polls == ["Running", "Running", "Complete"]


def test_the_launcher_runs_the_settings_it_was_given(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """launch_trainjob's TrainJob runs ``asrflow train`` with the component's settings, the
    pool's precision, and nodes and devices left to torchrun."""
    from types import SimpleNamespace

    from components.train import launch
    from components.train.cli import parse_train_args
    from components.train.settings import TrainSettings
    from pipelines.launch_trainjob import launch_trainjob

    jobs = []
    monkeypatch.setattr(trainjob, "pod_namespace", lambda: NAMESPACE)
    monkeypatch.setattr(trainjob, "run_trainjob", jobs.append)
    monkeypatch.setattr(
        launch, "write_run_outputs", lambda *_: SimpleNamespace(model="gs://b/runs/r1/model.nemo")
    )
    outputs = launch_trainjob.python_func(
        tarred_dir="gs://b/tarred",
        val_manifest="gs://b/val.json",
        data_root="gs://b",
        run_id="r1",
        num_nodes=2,
        gpu="a100",
        card=SimpleNamespace(path=str(tmp_path / "card"), metadata={}),
        curves=SimpleNamespace(path=str(tmp_path / "curves")),
        max_steps=100,
        overrides=["model.optim.lr=0.5"],
        precision="bf16-mixed",
        max_bad_shards=1,
    )
    assert outputs.model_uri == "gs://b/runs/r1/model.nemo"
    (job,) = jobs
    assert job.spec.trainer.num_nodes == 2 and job.metadata.name == trainjob.trainjob_name("r1")
    assert parse_train_args(job.spec.trainer.args) == TrainSettings(
        tarred_dir="gs://b/tarred",
        val_manifest="gs://b/val.json",
        run_dir="gs://b/runs/r1",
        max_steps=100,
        overrides=["model.optim.lr=0.5"],
        precision="bf16-mixed",
        max_bad_shards=1,
    )

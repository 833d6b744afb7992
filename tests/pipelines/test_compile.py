"""The compiled pipeline YAML (what a user uploads in the KFP UI) carries the GKE placement:
images, GPUs, node selectors, tolerations, retries, caching, labels and the hub token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from components.images import DATA_IMAGE, TRAIN_IMAGE
from pipelines import placement
from pipelines.asr_training import compile_pipeline
from pipelines.cli import main

DATA_STEPS = {"download", "plan-shard-groups", "write-shard-group", "merge-shards", "estimate-buckets"}
GPU_STEPS = {"train", "evaluate"}


class Compiled:
    """The two YAML documents KFP writes: the pipeline spec and the Kubernetes platform spec."""

    def __init__(self, path: Path) -> None:
        docs = list(yaml.safe_load_all(path.read_text()))
        self.spec, self.platform = docs[0], docs[1]
        self.executors = self.spec["deploymentSpec"]["executors"]
        self.k8s = self.platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
        self.tasks = dict(self._walk_tasks())

    def _walk_tasks(self):
        """(task name, task spec) for every task in the root DAG and nested DAGs."""
        dags = [self.spec["root"]["dag"]] + [c["dag"] for c in self.spec["components"].values() if "dag" in c]
        for dag in dags:
            yield from dag["tasks"].items()

    def executor_of(self, task: dict[str, Any]) -> str:
        return self.spec["components"][task["componentRef"]["name"]]["executorLabel"]

    def container(self, task_name: str) -> dict[str, Any]:
        return self.executors[self.executor_of(self.tasks[task_name])]["container"]

    def kubernetes(self, task_name: str) -> dict[str, Any]:
        return self.k8s[self.executor_of(self.tasks[task_name])]


@pytest.fixture(scope="module", params=["v100", "a100"])
def compiled(request, tmp_path_factory) -> tuple[str, Compiled]:
    path = compile_pipeline(str(tmp_path_factory.mktemp("compiled") / "asrflow.yaml"), gpu=request.param)
    return request.param, Compiled(path)


def test_every_step_is_present(compiled) -> None:
    _, c = compiled
    assert DATA_STEPS | GPU_STEPS | {"launch-trainjob", "prepare-eval-set", "prepare-eval-set-2"} <= set(
        c.tasks
    )


def test_images_data_vs_train(compiled) -> None:
    _, c = compiled
    for step in DATA_STEPS | {"prepare-eval-set", "launch-trainjob"}:
        assert c.container(step)["image"] == DATA_IMAGE, step
    for step in GPU_STEPS:
        assert c.container(step)["image"] == TRAIN_IMAGE, step


def test_gpu_steps_on_the_spot_gpu_pool(compiled) -> None:
    gpu, c = compiled
    pool = placement.GPU_POOLS[gpu]
    for step in GPU_STEPS:
        resources = c.container(step)["resources"]
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert int(resources["accelerator"]["resourceCount"]) >= 1
        k8s = c.kubernetes(step)
        assert k8s["nodeSelector"]["labels"] == {
            "cloud.google.com/gke-nodepool": pool.name,
            "cloud.google.com/gke-spot": "true",
            "cloud.google.com/gke-accelerator": pool.accelerator,
        }
        tolerations = {(t["key"], t["value"], t["effect"]) for t in k8s["tolerations"]}
        assert tolerations == {
            ("cloud.google.com/gke-spot", "true", "NoSchedule"),
            ("nvidia.com/gpu", "present", "NoSchedule"),
        }
        assert {
            "volumeName": "dshm",
            "mountPath": "/dev/shm",
            "medium": "Memory",
            "sizeLimit": "16Gi",
        } in k8s["emptyDirMounts"]


def test_training_precision_matches_the_gpu(compiled) -> None:
    gpu, c = compiled
    precision = c.tasks["train"]["inputs"]["parameters"]["precision"]["runtimeValue"]["constant"]
    assert precision == {"v100": "16-mixed", "a100": "bf16-mixed"}[gpu]


def test_data_steps_on_the_cpu_pool(compiled) -> None:
    _, c = compiled
    for step in DATA_STEPS | {"prepare-eval-set", "launch-trainjob"}:
        k8s = c.kubernetes(step)
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": placement.CPU_POOL.name}
        assert "tolerations" not in k8s
        assert "accelerator" not in c.container(step).get("resources", {})


def test_retries_everywhere_with_a_preemption_budget_for_training(compiled) -> None:
    _, c = compiled
    for name, task in c.tasks.items():
        if "componentRef" not in task or name.startswith("for-loop") or name.startswith("condition"):
            continue
        if c.spec["components"][task["componentRef"]["name"]].get("dag"):
            continue
        policy = task["retryPolicy"]
        assert policy["maxRetryCount"] >= placement.DATA_RETRIES, name
        assert policy["backoffDuration"], name
    assert c.tasks["train"]["retryPolicy"]["maxRetryCount"] == placement.TRAIN_RETRIES
    assert c.tasks["launch-trainjob"]["retryPolicy"]["maxRetryCount"] == placement.TRAIN_RETRIES


def test_caching_on_for_keyed_data_steps_off_for_training(compiled) -> None:
    _, c = compiled
    for step in {"plan-shard-groups", "write-shard-group", "merge-shards", "estimate-buckets"}:
        assert c.tasks[step]["cachingOptions"].get("enableCache") is True, step
    for step in {"download", "prepare-eval-set", "train", "launch-trainjob", "evaluate"}:
        assert not c.tasks[step]["cachingOptions"].get("enableCache"), step


def test_pod_labels(compiled) -> None:
    _, c = compiled
    for step in DATA_STEPS | GPU_STEPS:
        labels = c.kubernetes(step)["podMetadata"]["labels"]
        assert labels[placement.PART_OF_LABEL] == placement.PART_OF
        assert labels[placement.STEP_LABEL] == step.removesuffix("-group").replace(
            "write-shard", "write-shards"
        )


def test_hub_token_from_the_secret(compiled) -> None:
    _, c = compiled
    for step in {"download", "prepare-eval-set", "prepare-eval-set-2"}:
        (secret,) = c.kubernetes(step)["secretAsEnv"]
        assert secret["secretName"] == placement.HF_TOKEN_SECRET
        assert secret["keyToEnv"] == [{"secretKey": placement.HF_TOKEN_KEY, "envVar": "HF_TOKEN"}]
        assert secret["optional"] is True
    assert "secretAsEnv" not in c.kubernetes("train")


def test_parameters_have_ui_descriptions_and_defaults(compiled) -> None:
    _, c = compiled
    parameters = c.spec["root"]["inputDefinitions"]["parameters"]
    assert parameters["train_source"]["defaultValue"] == "hf://datasets/MLCommons/peoples_speech"
    assert parameters["train_config"]["defaultValue"] == "clean"
    assert parameters["model_config"]["defaultValue"] == "conformer_ctc_char"
    assert [s["name"] for s in parameters["eval_sets"]["defaultValue"]] == [
        "librispeech-dev-clean",
        "librispeech-test-clean",
    ]
    assert parameters["num_nodes"]["defaultValue"] == 1
    undocumented = [name for name, p in parameters.items() if not p.get("description")]
    assert not undocumented


def test_cli_compile_writes_the_yaml(tmp_path: Path) -> None:
    out = tmp_path / "a100.yaml"
    result = CliRunner().invoke(main, ["compile", "--out", str(out), "--gpu", "a100"])
    assert result.exit_code == 0, result.output
    c = Compiled(out)
    assert (
        c.kubernetes("train")["nodeSelector"]["labels"]["cloud.google.com/gke-accelerator"]
        == "nvidia-tesla-a100"
    )


def test_cli_compile_rejects_an_unknown_gpu(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["compile", "--out", str(tmp_path / "x.yaml"), "--gpu", "t4"])
    assert result.exit_code != 0
    assert "t4" in result.output

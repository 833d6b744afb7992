"""The mixture variant of the pipeline (``asrflow compile --mixture``): its parameters, the
per-source fan-out on the CPU pool, and the mixture reaching estimate-buckets and both training
steps; the default variant stays the one-source DAG without them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines import placement
from pipelines.asr_training import MIXTURE_PARAMETERS, compile_pipeline
from pipelines.cli import main
from tests.pipelines.compiled import Compiled

SOURCE_STEPS = ("resolve-revision", "download", "plan-shard-groups", "write-shard-group", "merge-shards")


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Compiled:
    return Compiled(compile_pipeline(str(tmp_path_factory.mktemp("mix") / "a.yaml"), mixture=True))


@pytest.fixture(scope="module")
def default(tmp_path_factory) -> Compiled:
    return Compiled(compile_pipeline(str(tmp_path_factory.mktemp("default") / "a.yaml")))


def test_the_mixture_parameters_are_the_variants_only(mixed: Compiled, default: Compiled) -> None:
    parameters = mixed.spec["root"]["inputDefinitions"]["parameters"]
    assert set(MIXTURE_PARAMETERS) <= set(parameters)
    assert parameters["extra_train_sets"]["defaultValue"] == []
    assert parameters["train_weight"]["defaultValue"] == 1.0
    description = mixed.spec["pipelineInfo"]["description"]
    for name in MIXTURE_PARAMETERS:
        assert f"- {name} (" in description, name
    assert not set(MIXTURE_PARAMETERS) & set(default.spec["root"]["inputDefinitions"]["parameters"])
    assert "check-mixture" not in default.tasks and "weigh-source" not in default.tasks
    for name in MIXTURE_PARAMETERS:
        assert name not in default.spec["pipelineInfo"]["description"], name
    steps = {name for name in default.tasks if not name.startswith(("condition-", "for-loop-"))}
    assert steps < set(mixed.tasks)  # the same steps, and the mixture's


def test_each_extra_source_has_its_own_data_steps_on_the_cpu_pool(mixed: Compiled) -> None:
    """The sub-pipeline that prepares an extra source: every data step, on the CPU pool, retried."""
    (sub,) = [
        c["dag"]["tasks"] for name, c in mixed.spec["components"].items() if "prepare-training-source" in name
    ]
    inner = {
        name: task
        for c in mixed.spec["components"].values()
        if "dag" in c
        for name, task in c["dag"]["tasks"].items()
        if c["dag"]["tasks"] is sub or name == "write-shard-group"
    }
    assert set(SOURCE_STEPS) | {"weigh-source"} <= set(inner)
    for name, task in inner.items():
        if mixed.spec["components"][task["componentRef"]["name"]].get("dag"):
            continue
        k8s = mixed.k8s[mixed.executor_of(task)]
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": placement.CPU_POOL.name}, (
            name
        )
        assert task["retryPolicy"]["maxRetryCount"] >= placement.DATA_RETRY.retries, name
        assert k8s["podMetadata"]["labels"][placement.DATASET_LABEL] in ("mix", "train"), name


def test_the_checked_mixture_reaches_the_bins_and_both_training_steps(mixed: Compiled) -> None:
    check = mixed.tasks["check-mixture"]["inputs"]["parameters"]["mix"]
    assert "taskOutputParameter" in check or "componentInputParameter" in check
    for step in ("estimate-buckets", "train", "launch-trainjob"):
        inputs = mixed.tasks[step]["inputs"]["parameters"]
        source = inputs["mix"]
        if "taskOutputParameter" in source:
            assert source["taskOutputParameter"]["producerTask"] == "check-mixture", step
        else:  # inside dsl.If / dsl.Else: handed down by the condition's DAG
            assert source["componentInputParameter"] == "pipelinechannel--check-mixture-Output", step
        for setting, parameter in (("weight", "train_weight"), ("mix_temperature", "mix_temperature")):
            given = inputs[setting]["componentInputParameter"].removeprefix("pipelinechannel--")
            assert given == parameter, (step, setting)


def test_cli_compile_mixture(tmp_path: Path) -> None:
    out = tmp_path / "mix.yaml"
    result = CliRunner().invoke(main, ["compile", "--out", str(out), "--mixture"])
    assert result.exit_code == 0, result.output
    assert "extra_train_sets" in Compiled(out).spec["root"]["inputDefinitions"]["parameters"]


def test_the_collected_items_resolve_to_each_weigh_source_as_kfp_s_driver_walks_them(mixed: Compiled) -> None:
    """check-mixture's ``mix`` is dsl.Collected over a sub-pipeline inside a ParallelFor. KFP
    2.17.0's driver resolves it by following each DAG's output spec (stored as the DAG
    execution's ``parameter_producer_task``: backend/src/v2/metadata/client.go:628,715) from
    the loop's DAG through every iteration's nested DAG down to a container
    (backend/src/v2/driver/resolve.go:645-660 collects when the producer is a ParallelFor;
    CollectInputs 869-990: GetProducerTask follows ``valueFromParameter`` 1093-1110, a DAG
    inside an iteration is "base case 2", a container "base case 1"). Walk it the same way."""
    components = mixed.spec["components"]
    source = mixed.tasks["check-mixture"]["inputs"]["parameters"]["mix"]["taskOutputParameter"]
    producer, key = source["producerTask"], source["outputParameterKey"]
    loop = mixed.spec["root"]["dag"]["tasks"][producer]
    assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--extra_train_sets"
    assert components[loop["componentRef"]["name"]]["dag"]["tasks"].keys() == {"prepare-training-source"}
    component = components[loop["componentRef"]["name"]]
    walked = [producer]
    while "dag" in component:
        spec = component["dag"]["outputs"]["parameters"][key]["valueFromParameter"]
        task = component["dag"]["tasks"][spec["producerSubtask"]]
        walked.append(spec["producerSubtask"])
        key, component = spec["outputParameterKey"], components[task["componentRef"]["name"]]
    assert walked == [producer, "prepare-training-source", "weigh-source"]
    assert component["outputDefinitions"]["parameters"][key]["parameterType"] == "STRING"
    # each item's fields reach the sub-pipeline by CEL selection on the loop item (resolve.go:145-160)
    item_inputs = components[loop["componentRef"]["name"]]["dag"]["tasks"]["prepare-training-source"][
        "inputs"
    ]
    for field in ("source", "config", "split", "revision", "weight"):
        given = item_inputs["parameters"][field]
        assert given["componentInputParameter"] == loop["parameterIterator"]["itemInput"], field
        assert given["parameterExpressionSelector"] == f'parseJson(string_value)["{field}"]', field

"""The compiled pipeline YAML (what a user uploads in the KFP UI) carries the GKE placement:
images, GPUs, node selectors, tolerations, retries, caching, labels and the hub token."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from components.images import DATA_IMAGE, TRAIN_IMAGE
from pipelines import placement
from pipelines.asr_training import compile_pipeline
from pipelines.cli import main
from tests.pipelines.compiled import Compiled

DATA_STEPS = {
    "resolve-revision",
    "download",
    "plan-shard-groups",
    "write-shard-group",
    "merge-shards",
    "estimate-buckets",
}
GPU_STEPS = {"train", "evaluate"}


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
    for step in ("train", "launch-trainjob"):
        precision = c.tasks[step]["inputs"]["parameters"]["precision"]["runtimeValue"]["constant"]
        assert precision == {"v100": "16-mixed", "a100": "bf16-mixed"}[gpu], step


def test_training_parameters_pass_through_as_settings(compiled) -> None:
    """The pipeline parameters that are training settings have the settings' KFP types, valid
    defaults, and reach both training steps as the setting of that name."""
    import dataclasses
    import inspect

    from components.train.settings import TrainSettings, kfp_type
    from pipelines.asr_training import TRAINING_PARAMETERS, asr_training

    _, c = compiled
    fields = {field.name: field for field in dataclasses.fields(TrainSettings)}
    parameters = inspect.signature(asr_training.pipeline_func).parameters
    for name, setting in TRAINING_PARAMETERS.items():
        assert parameters[name].annotation is kfp_type(TrainSettings, fields[setting]), name
        required = {"tarred_dir": "t", "val_manifest": "v", "run_dir": "r"}
        TrainSettings.from_kfp({setting: parameters[name].default}, **required)  # a valid default
        for step in ("train", "launch-trainjob"):
            source = c.tasks[step]["inputs"]["parameters"][setting]["componentInputParameter"]
            assert source == f"pipelinechannel--{name}", (step, setting)


def test_data_steps_on_the_cpu_pool(compiled) -> None:
    _, c = compiled
    for step in DATA_STEPS | {"prepare-eval-set", "launch-trainjob"}:
        k8s = c.kubernetes(step)
        assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": placement.CPU_POOL.name}
        assert "tolerations" not in k8s
        assert "accelerator" not in c.container(step).get("resources", {})


def test_retries_everywhere_with_a_preemption_budget_for_training(compiled) -> None:
    """What Argo makes of these is checked in test_retry_policy.py."""
    _, c = compiled
    for name, task in c.tasks.items():
        if c.spec["components"][task["componentRef"]["name"]].get("dag"):
            continue
        assert task["retryPolicy"]["maxRetryCount"] >= placement.DATA_RETRY.retries, name
    for step in ("train", "launch-trainjob"):
        assert c.tasks[step]["retryPolicy"] == {
            "maxRetryCount": placement.TRAIN_RETRY.retries,
            "backoffDuration": f"{placement.TRAIN_RETRY.backoff_s}s",
            "backoffFactor": float(placement.TRAIN_RETRY.factor),
            "backoffMaxDuration": f"{placement.TRAIN_RETRY.window_s}s",
        }, step


def test_the_launcher_asks_for_what_polling_needs(compiled) -> None:
    _, c = compiled
    resources = c.container("launch-trainjob")["resources"]
    assert resources["cpuRequest"] == 0.25
    assert resources["resourceMemoryRequest"] == placement.LAUNCHER_MEMORY


def test_bins_reach_training_as_an_input(compiled) -> None:
    _, c = compiled
    for step in ("train", "launch-trainjob"):
        source = c.tasks[step]["inputs"]["parameters"]["bucket_bins"]["componentInputParameter"]
        assert source == "pipelinechannel--estimate-buckets-Output", step


def test_more_gpus_than_the_pool_has_is_refused_at_compile_time(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="have 1 GPU"):
        compile_pipeline(str(tmp_path / "x.yaml"), gpu="v100", gpus_per_node=4)
    result = CliRunner().invoke(main, ["compile", "--out", str(tmp_path / "x.yaml"), "--gpus", "8"])
    assert result.exit_code != 0
    assert "--gpus 8" in result.output and "Traceback" not in result.output


def test_caching_on_for_keyed_data_steps_off_for_training(compiled) -> None:
    _, c = compiled
    for step in {"download", "plan-shard-groups", "write-shard-group", "merge-shards", "estimate-buckets"}:
        assert c.tasks[step]["cachingOptions"].get("enableCache") is True, step
    for step in {"resolve-revision", "prepare-eval-set", "train", "launch-trainjob", "evaluate"}:
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
    for step in {"resolve-revision", "download", "prepare-eval-set", "prepare-eval-set-2"}:
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
    assert parameters["validation_set"]["defaultValue"]["name"] == "librispeech-dev-clean"
    assert [s["name"] for s in parameters["eval_sets"]["defaultValue"]] == ["librispeech-test-clean"]
    assert parameters["max_wer"]["defaultValue"] == 0.9
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


def test_the_ui_description_and_readme_explain_every_parameter(compiled) -> None:
    """KFP 2.17's run form shows parameters as `name - type` only: the pipeline's description
    and README's table (regenerate: python -m pipelines.asr_training README.md) explain them."""
    from pipelines.asr_training import asr_training, parameter_table

    _, c = compiled
    description = c.spec["pipelineInfo"]["description"]
    for name in c.spec["root"]["inputDefinitions"]["parameters"]:
        assert f"- {name} (" in description, name
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert parameter_table(asr_training.pipeline_func) in readme


def test_a_retried_run_finds_its_own_run_directory_and_trainjob(compiled) -> None:
    """KFP's Retry keeps the run id (KFP 2.17.0 apiserver resource_manager.go:1069-1147,
    RetryRun), and every step that writes under runs/<run id> takes it from the run's own
    id, never a per-attempt value: the retried run resumes the same checkpoints and
    re-attaches to the TrainJob named after it (pipelines.trainjob.trainjob_name)."""
    _, c = compiled
    for step in ("train", "launch-trainjob", "evaluate"):
        run_id = c.tasks[step]["inputs"]["parameters"]["run_id"]
        assert run_id == {"runtimeValue": {"constant": "{{$.pipeline_job_uuid}}"}}, step


# --- the tokenizer step (sub-word models) ---------------------------------------------------------


def test_the_tokenizer_step_runs_on_the_training_text_and_feeds_training(compiled) -> None:
    """train-tokenizer reads merge-shards' output and the model config (it decides at run time
    whether the model needs a tokenizer) and hands its directory to both training steps."""
    _, c = compiled
    inputs = c.tasks["train-tokenizer"]["inputs"]["parameters"]
    assert inputs["source"]["taskOutputParameter"] == {
        "producerTask": "merge-shards",
        "outputParameterKey": "out_dir",
    }
    assert inputs["config"]["componentInputParameter"] == "model_config"
    assert inputs["vocab_size"]["componentInputParameter"] == "tokenizer_vocab_size"
    assert inputs["data_root"]["componentInputParameter"] == "data_root"
    for step in ("train", "launch-trainjob"):
        source = c.tasks[step]["inputs"]["parameters"]["tokenizer_dir"]["componentInputParameter"]
        assert source == "pipelinechannel--train-tokenizer-Output", step


def test_the_tokenizer_step_is_a_cached_cpu_step_in_the_train_image(compiled) -> None:
    """NeMo's SentencePiece trainer is in the train image; it needs no GPU, so the CPU pool,
    with the data steps' retries, labels and caching."""
    _, c = compiled
    assert c.container("train-tokenizer")["image"] == TRAIN_IMAGE
    k8s = c.kubernetes("train-tokenizer")
    assert k8s["nodeSelector"]["labels"] == {"cloud.google.com/gke-nodepool": placement.CPU_POOL.name}
    assert "tolerations" not in k8s and "accelerator" not in c.container("train-tokenizer")["resources"]
    assert c.tasks["train-tokenizer"]["cachingOptions"].get("enableCache") is True
    assert c.tasks["train-tokenizer"]["retryPolicy"]["maxRetryCount"] == placement.DATA_RETRY.retries
    assert k8s["podMetadata"]["labels"][placement.STEP_LABEL] == "train-tokenizer"


def test_the_lm_step_reads_the_training_text_with_the_tokenizer_and_feeds_evaluation(compiled) -> None:
    """train-lm takes merge-shards' directory, the tokenizer step's output and the LM
    parameters; evaluation decodes with what it returns ("" for none: lm_order 0, or a
    character model). A cached CPU step in the train image (NeMo's n-gram writer)."""
    _, c = compiled
    inputs = c.tasks["train-lm"]["inputs"]["parameters"]
    assert inputs["dataset_dir"]["taskOutputParameter"] == {
        "producerTask": "merge-shards",
        "outputParameterKey": "out_dir",
    }
    assert inputs["tokenizer_dir"]["taskOutputParameter"] == {
        "producerTask": "train-tokenizer",
        "outputParameterKey": "Output",
    }
    assert inputs["order"]["componentInputParameter"] == "lm_order"
    assert inputs["extra_sources"]["componentInputParameter"] == "lm_text_sources"
    evaluate = c.tasks["evaluate"]["inputs"]["parameters"]
    assert evaluate["lm_dir"]["taskOutputParameter"] == {
        "producerTask": "train-lm",
        "outputParameterKey": "Output",
    }
    assert evaluate["lm_alpha"]["componentInputParameter"] == "lm_alpha"
    assert evaluate["tune_lm_alpha"]["componentInputParameter"] == "tune_lm_alpha"
    assert c.container("train-lm")["image"] == TRAIN_IMAGE
    assert c.kubernetes("train-lm")["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-nodepool": placement.CPU_POOL.name
    }
    assert c.tasks["train-lm"]["cachingOptions"].get("enableCache") is True
    assert c.spec["root"]["inputDefinitions"]["parameters"]["lm_order"]["defaultValue"] == 0


def test_a_rerun_on_the_same_text_reuses_the_tokenizer(compiled) -> None:
    """Under KFP 2.17's cache rules (tests/pipelines/kfp_backend.py): the second run on unchanged
    data is a cache hit for train-tokenizer and trains with the first run's tokenizer; a new
    vocabulary size misses."""
    from tests.pipelines.kfp_backend import CacheReplay

    _, c = compiled
    arguments = {"data_root": "gs://bucket/asrflow", "model_config": "conformer_ctc_bpe"}
    replay = CacheReplay(c.spec)
    first = replay.run(arguments, run_id="run-1")
    second = replay.run(arguments, run_id="run-2")
    third = replay.run({**arguments, "tokenizer_vocab_size": 512}, run_id="run-3")

    def tokenizer_and_train(executions):
        (tokenizer,) = [e for e in executions if e.task == "train-tokenizer"]
        (training,) = [e for e in executions if e.task == "train"]
        return tokenizer, training

    (tok1, train1), (tok2, train2), (tok3, _) = map(tokenizer_and_train, (first, second, third))
    assert not tok1.cached and tok2.cached and not tok3.cached
    assert train1.inputs["tokenizer_dir"] == tok1.parameters["Output"] == train2.inputs["tokenizer_dir"]

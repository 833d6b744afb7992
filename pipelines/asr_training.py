"""The asrflow pipeline: download → tarred shards → bucket bins → train → evaluate.

``asrflow compile --out asrflow.yaml [--gpu v100|a100]`` writes the YAML to upload in the
KFP UI; ``asrflow run --local`` runs this same function through ``kfp.local``. Standard
library and kfp only at top level: compiling needs neither NeMo nor torch.
"""

from pathlib import Path

from kfp import compiler, dsl

from components.buckets.component import estimate_buckets
from components.download.component import download, prepare_eval_set
from components.evaluate.component import evaluate
from components.shard.component import merge_shards, plan_shard_groups, write_shard_group
from components.train.component import launch_trainjob, train
from pipelines import placement

PIPELINE_NAME = "asrflow-asr-training"

LIBRISPEECH = "hf://datasets/openslr/librispeech_asr"
LIBRISPEECH_COLUMNS = {
    "id_column": "id",
    "audio_column": "audio",
    "text_column": "text",
    "duration_column": "",
}
LIBRISPEECH_DEV_CLEAN = {
    "name": "librispeech-dev-clean",
    "source": LIBRISPEECH,
    "config": "clean",
    "split": "validation",
    "revision": "main",
    **LIBRISPEECH_COLUMNS,
}
LIBRISPEECH_TEST_CLEAN = {**LIBRISPEECH_DEV_CLEAN, "name": "librispeech-test-clean", "split": "test"}


def build_pipeline(gpu: str = "v100", gpus_per_node: int | None = None, local: bool = False):
    """The pipeline function with training placed on the ``gpu`` spot pool.

    Args:
        gpu: ``v100`` or ``a100``: the node pool, accelerator and precision of training.
        gpus_per_node: GPUs per training node (default: the pool's).
        local: for ``kfp.local`` on this machine: no retries (kfp.local honours them with
            their backoff, which here only delays the report of a real error) and the
            precision chosen by the hardware found (32 on a CPU) instead of the pool's.
    """
    pool = placement.GPU_POOLS[gpu]
    gpus = gpus_per_node or pool.gpus_per_node

    @dsl.pipeline(name=PIPELINE_NAME, description=__doc__.splitlines()[0])
    def asr_training(
        data_root: str = "gs://YOUR-BUCKET/asrflow",
        train_source: str = "hf://datasets/MLCommons/peoples_speech",
        train_config: str = "clean",
        train_split: str = "train",
        revision: str = "main",
        validation_set: dict = LIBRISPEECH_DEV_CLEAN,
        eval_sets: list = [LIBRISPEECH_DEV_CLEAN, LIBRISPEECH_TEST_CLEAN],  # noqa: B006 (KFP default)
        num_shards: int = 1024,
        shard_groups: int = 32,
        seed: int = 0,
        min_duration: float = 0.5,
        max_duration: float = 20.0,
        max_reject_fraction: float = 0.01,
        num_buckets: int = 30,
        model_config: str = "conformer_ctc_char",
        max_steps: int = 100000,
        checkpoint_every: int = 1000,
        train_overrides: list = [],  # noqa: B006 (KFP default)
        num_nodes: int = 1,
        champion_name: str = "",
    ) -> dsl.Artifact:
        """Train a NeMo Conformer-CTC on a hub speech dataset and evaluate WER/CER.

        Args:
            data_root: where datasets, runs and models live (gs://bucket/prefix).
            train_source: training data: hf://datasets/OWNER/NAME, a gs:// or local
                directory with the same parquet layout, or a NeMo manifest.
            train_config: the dataset configuration (People's Speech: clean, dirty, …).
            train_split: the split to train on.
            revision: hub branch, tag or commit; the download step resolves it to a commit SHA,
                so new data upstream makes new cache keys downstream.
            validation_set: the set validated on during training ({name, source, config,
                split, revision, column names}).
            eval_sets: the sets the trained model is evaluated on (same form).
            num_shards: NeMo tarred shards to write (a multiple of shard_groups).
            shard_groups: parallel write-shards tasks (each a group of input files).
            seed: seed for shard assignment and training.
            min_duration: shortest utterance kept, seconds.
            max_duration: longest utterance kept, seconds.
            max_reject_fraction: write-shards fails when more items than this are corrupt.
            num_buckets: Lhotse duration buckets estimated for training.
            model_config: a config under components/train/conf (conformer_ctc_char,
                conformer_ctc_bpe, small, tiny) or a YAML path.
            max_steps: training steps.
            checkpoint_every: steps between checkpoints (a preempted run loses at most these).
            train_overrides: extra NeMo config overrides, key=value.
            num_nodes: training nodes; above 1 a Kubeflow Trainer TrainJob runs training.
            champion_name: the model in service, models/NAME/champion.json under data_root:
                the new model replaces it only when its mean WER is lower. Empty: no
                comparison, no promotion.
        """
        dataset_label = "train"

        # Not cached: it resolves the revision to a commit SHA and verifies what an earlier
        # run copied (cheap). Its output directory names that SHA, so the cached steps
        # downstream get a new key exactly when the data changed upstream.
        raw = download(
            source=train_source,
            config=train_config,
            split=train_split,
            revision=revision,
            data_root=data_root,
        )
        placement.place_data_step(raw, "download", dataset_label, cache=False)
        placement.use_hub_token(raw)

        groups = plan_shard_groups(input_dir=raw.outputs["Output"], max_groups=shard_groups)
        placement.place_data_step(groups, "plan-shard-groups", dataset_label)

        with dsl.ParallelFor(groups.output) as group:
            part = write_shard_group(
                download_card=raw.outputs["card"],
                group=group,
                num_shards=num_shards,
                seed=seed,
                min_duration=min_duration,
                max_duration=max_duration,
            )
            placement.place_data_step(part, "write-shards", dataset_label)

        shards = merge_shards(
            input_dir=raw.outputs["Output"],
            group_cards=dsl.Collected(part.outputs["card"]),
            max_reject_fraction=max_reject_fraction,
        )
        placement.place_data_step(shards, "merge-shards", dataset_label)

        bins = estimate_buckets(tarred_dir=shards.outputs["out_dir"], num_buckets=num_buckets)
        placement.place_data_step(bins, "estimate-buckets", dataset_label)

        validation = prepare_eval_set(spec=validation_set, data_root=data_root)
        placement.place_data_step(validation, "prepare-eval-set", "validation", cache=False)
        placement.use_hub_token(validation)

        with dsl.ParallelFor(eval_sets) as eval_set:
            prepared = prepare_eval_set(spec=eval_set, data_root=data_root)
            placement.place_data_step(prepared, "prepare-eval-set", "eval", cache=False)
            placement.use_hub_token(prepared)

        train_args = dict(
            tarred_dir=shards.outputs["out_dir"],
            val_manifest=validation.outputs["manifest"],
            config=model_config,
            data_root=data_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            max_steps=max_steps,
            checkpoint_every=checkpoint_every,
            overrides=train_overrides,
            seed=seed,
        )
        with dsl.If(num_nodes > 1, name="multi-node"):
            multi = launch_trainjob(**train_args, num_nodes=num_nodes, gpu=gpu)
            multi.after(bins)
            placement.place_data_step(multi, "train", dataset_label, cache=False)
            multi.set_retry(placement.TRAIN_RETRIES)
        with dsl.Else(name="one-node"):
            single = train(**train_args, devices=gpus, precision="" if local else pool.precision)
            single.after(bins)
            placement.place_gpu_step(single, "train", gpu, gpus, dataset_label)
        model_uri = dsl.OneOf(multi.outputs["model_uri"], single.outputs["model_uri"])

        scores = evaluate(
            model_uri=model_uri,
            eval_sets=dsl.Collected(prepared.outputs["eval_set"]),
            data_root=data_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            champion_name=champion_name,
        )
        placement.place_gpu_step(scores, "evaluate", gpu, 1, dataset_label, retries=placement.DATA_RETRIES)
        if local:
            for task in (raw, groups, part, shards, bins, validation, prepared, multi, single, scores):
                task.set_retry(0)
        return scores.outputs["card"]

    return asr_training


asr_training = build_pipeline()


def compile_pipeline(out: str, gpu: str = "v100", gpus_per_node: int | None = None) -> Path:
    """Compile the pipeline for one GPU pool to ``out`` (YAML)."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(gpu, gpus_per_node), package_path=str(path))
    return path

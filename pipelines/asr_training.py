"""The asrflow pipeline: download → tarred shards → bucket bins (and a tokenizer) → train → evaluate.

``asrflow compile --out asrflow.yaml [--gpu v100|a100]`` writes the YAML to upload in the
KFP UI; ``asrflow run --local`` runs this same function through ``kfp.local``. Standard
library and kfp only at top level: compiling needs neither NeMo nor torch.
"""

import inspect
import json
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components.buckets.component import estimate_buckets
from components.download.component import download, prepare_eval_set, resolve_revision
from components.evaluate.component import evaluate
from components.lm.component import train_lm
from components.shard.component import merge_shards, plan_shard_groups, write_shard_group
from components.train.component import check_mixture, train, train_tokenizer, weigh_source
from pipelines import placement
from pipelines.launch_trainjob import launch_trainjob

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

# The pipeline's parameters that training takes as they are: pipeline name -> the field of
# components.train.settings.TrainSettings (and the training components' parameter). Their
# types follow the settings (a test checks it); their defaults are the pipeline's own.
TRAINING_PARAMETERS = {
    "model_config": "config",
    "max_steps": "max_steps",
    "checkpoint_every": "checkpoint_every",
    "train_overrides": "overrides",
    "seed": "seed",
    "num_nodes": "num_nodes",
    "max_bad_shards": "max_bad_shards",
    "stall_timeout": "stall_timeout",
    "init_from": "init_from",
    "freeze_encoder": "freeze_encoder",
    "train_last_layers": "train_last_layers",
}


MIXTURE_PARAMETERS = ("train_weight", "extra_train_sets", "mix_temperature")
"""The parameters of the mixture variant (``build_pipeline(mixture=True)``), left out of the default."""
MIX_DATASET_LABEL = "mix"


def _tarred_source(
    source: Any,
    config: Any,
    split: Any,
    revision: Any,
    data_root: Any,
    num_shards: Any,
    shard_groups: Any,
    seed: Any,
    min_duration: Any,
    max_duration: Any,
    max_reject_fraction: Any,
    dataset_label: str,
) -> list:
    """One training source's data steps: resolve-revision, download, its own write-shards
    fan-out and merge. Returns the tasks, merge-shards last (its ``out_dir`` is the tarred
    dataset).

    The resolution is not cached: it resolves the revision to a commit SHA (or a content
    hash). The download is cached and keyed by it, so on unchanged data every data step
    after it is a cache hit (KFP 2.17's key holds input values and input artifact ids:
    backend/src/v2/cacheutils/cache.go:173-229; a hit hands downstream the cached
    execution's artifacts: backend/src/v2/driver/cache.go:56-80), and new data upstream makes
    new keys all the way down; each source is so cached on its own.
    """
    resolved = resolve_revision(source=source, config=config, split=split, revision=revision)
    placement.place_data_step(resolved, "resolve-revision", dataset_label, cache=False)
    placement.use_hub_token(resolved)

    raw = download(
        source=source, config=config, split=split, revision=resolved.outputs["Output"], data_root=data_root
    )
    placement.place_data_step(raw, "download", dataset_label)
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
    return [resolved, raw, groups, part, shards]


def _prepare_source_pipeline(local: bool):
    """The sub-pipeline that makes one more training source (:func:`_tarred_source`) and its
    ``DIR=WEIGHT`` item for the mixture."""

    def prepare_training_source(
        source: str,
        config: str,
        split: str,
        revision: str,
        weight: float,
        data_root: str,
        num_shards: int,
        shard_groups: int,
        seed: int,
        min_duration: float,
        max_duration: float,
        max_reject_fraction: float,
    ) -> str:
        """One more training source, tarred, as the ``DIR=WEIGHT`` item of the mixture."""
        tasks = _tarred_source(
            source,
            config,
            split,
            revision,
            data_root,
            num_shards,
            shard_groups,
            seed,
            min_duration,
            max_duration,
            max_reject_fraction,
            MIX_DATASET_LABEL,
        )
        item = weigh_source(tarred_dir=tasks[-1].outputs["out_dir"], weight=weight)
        placement.place_data_step(item, "weigh-source", MIX_DATASET_LABEL)
        if local:
            for task in [*tasks, item]:
                task.set_retry(0)
        return item.output

    return dsl.pipeline(name="prepare-training-source")(prepare_training_source)


def build_pipeline(
    gpu: str = "v100", gpus_per_node: int | None = None, local: bool = False, mixture: bool = False
):
    """The pipeline function with training placed on the ``gpu`` spot pool.

    Args:
        gpu: ``v100`` or ``a100``: the node pool, accelerator and precision of training.
        gpus_per_node: GPUs per training node (default: the pool's; at most the pool's, or
            the pods could never be scheduled).
        local: for ``kfp.local`` on this machine: no retries (kfp.local honours them with
            their backoff, which here only delays the report of a real error) and the
            precision chosen by the hardware found (32 on a CPU) instead of the pool's.
        mixture: the variant that trains on a weighted mixture: the parameters
            :data:`MIXTURE_PARAMETERS`, and a fan-out that prepares each extra source. The
            default leaves them out, so its DAG is the one-source DAG: kfp.local cannot
            collect the outputs of a ParallelFor over an empty list (``for-loop-… not
            found``), and one source needs no loop.

    Raises:
        ValueError: an unknown GPU, or more GPUs per node than the pool's nodes have.
    """
    if gpu not in placement.GPU_POOLS:
        raise ValueError(f"unknown GPU {gpu!r}: choose one of {', '.join(placement.GPU_POOLS)}")
    pool = placement.GPU_POOLS[gpu]
    gpus = gpus_per_node or pool.gpus_per_node
    if not 1 <= gpus <= pool.gpus_per_node:
        raise ValueError(
            f"--gpus {gpus}: the {gpu} pool's nodes ({pool.machine_type}) have {pool.gpus_per_node} "
            f"GPU(s) each; a pod asking for more is never scheduled. Use num_nodes for more GPUs."
        )

    def asr_training(
        data_root: str = "gs://YOUR-BUCKET/asrflow",
        train_source: str = "hf://datasets/MLCommons/peoples_speech",
        train_config: str = "clean",
        train_split: str = "train",
        revision: str = "main",
        validation_set: dict = LIBRISPEECH_DEV_CLEAN,
        eval_sets: list = [LIBRISPEECH_TEST_CLEAN],  # noqa: B006 (KFP default)
        num_shards: int = 1024,
        shard_groups: int = 32,
        seed: int = 0,
        min_duration: float = 0.5,
        max_duration: float = 20.0,
        max_reject_fraction: float = 0.01,
        num_buckets: int = 30,
        model_config: str = "conformer_ctc_char",
        tokenizer_vocab_size: int = 256,
        init_from: str = "",
        freeze_encoder: bool = False,
        train_last_layers: int = 0,
        max_steps: int = 100000,
        checkpoint_every: int = 1000,
        train_overrides: list = [],  # noqa: B006 (KFP default)
        num_nodes: int = 1,
        max_bad_shards: int = 0,
        stall_timeout: float = 30.0,
        champion_name: str = "",
        max_wer: float = 0.9,
        lm_order: int = 0,
        lm_text_sources: list = [],  # noqa: B006 (KFP default)
        lm_alpha: float = 0.5,
        tune_lm_alpha: bool = True,
        lm_beam_size: int = 0,
        train_weight: float = 1.0,
        extra_train_sets: list = [],  # noqa: B006 (KFP default)
        mix_temperature: float = 1.0,
    ) -> dsl.Artifact:
        """Train (or fine-tune) a NeMo speech model on a hub speech dataset and evaluate WER/CER.

        Args:
            data_root: where datasets, runs and models live (gs://bucket/prefix).
            train_source: training data: hf://datasets/OWNER/NAME, a gs:// or local
                directory with the same parquet layout, or a NeMo manifest.
            train_config: the dataset configuration (People's Speech: clean, dirty, …).
            train_split: the split to train on.
            revision: hub branch, tag or commit; the download step resolves it to a commit SHA,
                so new data upstream makes new cache keys downstream.
            validation_set: the set validated on during training ({name, source, config,
                split, revision, column names}); the trained model is evaluated on it too.
            eval_sets: more sets the trained model is evaluated on (same form); do not repeat
                the validation set here (it would be prepared twice at once).
            num_shards: NeMo tarred shards to write (a multiple of shard_groups).
            shard_groups: parallel write-shards tasks (each a group of input files).
            seed: seed for shard assignment and training.
            min_duration: shortest utterance kept, seconds.
            max_duration: longest utterance kept, seconds.
            max_reject_fraction: write-shards fails when more items than this are corrupt.
            num_buckets: Lhotse duration buckets estimated for training.
            model_config: a config under components/train/conf (conformer_ctc_char,
                conformer_ctc_bpe, fastconformer_ctc_bpe, fastconformer_rnnt_bpe,
                fastconformer_hybrid_tdt_ctc_bpe, small, small_ctc_bpe, small_rnnt_bpe,
                small_hybrid_rnnt_ctc_bpe, tiny, the finetune_* recipes) or a YAML path.
            tokenizer_vocab_size: SentencePiece vocabulary of the tokenizer trained on the
                training text for a sub-word (BPE) model_config (a character one needs none).
                0: none trained, for fine-tuning a sub-word init_from model with its own
                tokenizer.
            init_from: fine-tuning: the model to start from, a .nemo (gs://) or a pretrained
                name on the Hugging Face hub (nvidia/…). Its own config gives the
                architecture; model_config gives the data, optim and trainer sections. A new
                tokenizer (tokenizer_vocab_size) replaces its vocabulary. Empty: a fresh model.
            freeze_encoder: fine-tuning: the encoder's weights stay as loaded; only the
                decoder (and train_last_layers) train.
            train_last_layers: with freeze_encoder, the last N encoder layers still train.
            max_steps: training steps.
            checkpoint_every: steps between checkpoints (a preempted run loses at most these).
            train_overrides: extra NeMo config overrides, key=value.
            num_nodes: training nodes; above 1 a Kubeflow Trainer TrainJob runs training.
            max_bad_shards: damaged shards training may do without (listed in its card); one
                more fails training, naming the shard.
            stall_timeout: minutes without a training or validation batch before training
                fails (0: never).
            champion_name: the model in service, models/NAME/champion.json under data_root:
                the new model replaces it only when its mean WER is lower. Empty: no
                comparison, no promotion.
            max_wer: promotion ceiling: a model whose mean WER is above it (0.9 = 90%) is
                never promoted, even when there is no champion yet.
            lm_order: an n-gram language model of this order (in sub-word tokens) over the
                training text, used by evaluation's beam search; 0: none. Sub-word models
                only (it needs the train-tokenizer step's tokenizer).
            lm_text_sources: more text for the LM: NeMo manifests or tarred dataset
                directories (gs://).
            lm_alpha: the LM's weight in beam search (unless tune_lm_alpha).
            tune_lm_alpha: pick the LM weight on the validation set only.
            lm_beam_size: the beam of the beam search with the LM (0: 4). The champion comparison
                stays on greedy decoding of the model's own head (what is served); the LM
                figures are reported beside it.
            train_weight: the mixture variant: the weight of train_source among the training
                sources (each next utterance comes from a source with probability
                proportional to its weight: shares of utterances, not hours).
            extra_train_sets: the mixture variant: more training sources, each {source,
                config, split, revision, weight}; each is downloaded and sharded by its own
                fan-out (cached per source), the bucket bins are estimated over the mixture,
                and the train card records the hours and utterances seen of each.
            mix_temperature: the mixture variant: NeMo's reweight_temperature T; a source is
                drawn with probability w**T / sum(w**T) (1: as weighted; 0: equal).
        """
        arguments = dict(locals())
        dataset_label = "train"

        source_tasks = _tarred_source(
            train_source,
            train_config,
            train_split,
            revision,
            data_root,
            num_shards,
            shard_groups,
            seed,
            min_duration,
            max_duration,
            max_reject_fraction,
            dataset_label,
        )
        shards = source_tasks[-1]

        mix_args: dict = {}
        if mixture:
            with dsl.ParallelFor(extra_train_sets) as extra:
                prepared_source = prepare_source(
                    source=extra.source,
                    config=extra.config,
                    split=extra.split,
                    revision=extra.revision,
                    weight=extra.weight,
                    data_root=data_root,
                    num_shards=num_shards,
                    shard_groups=shard_groups,
                    seed=seed,
                    min_duration=min_duration,
                    max_duration=max_duration,
                    max_reject_fraction=max_reject_fraction,
                )
            # Checked once at the root: KFP 2.17's compiler cannot hand dsl.Collected to the
            # tasks inside dsl.If / dsl.Else (KeyError 'for-loop-…'), and a bad mixture fails here.
            mixed = check_mixture(
                tarred_dir=shards.outputs["out_dir"],
                weight=train_weight,
                mix=dsl.Collected(prepared_source.output),
                mix_temperature=mix_temperature,
            )
            placement.place_data_step(mixed, "check-mixture", dataset_label)
            mix_args = dict(weight=train_weight, mix=mixed.output, mix_temperature=mix_temperature)

        # over the mixture, when there is one: the bins then go to no source's metadata.yaml
        bins = estimate_buckets(tarred_dir=shards.outputs["out_dir"], num_buckets=num_buckets, **mix_args)
        placement.place_data_step(bins, "estimate-buckets", dataset_label)

        # Cached and keyed by the training text: the same shards (and settings) give a cache
        # hit; a miss on the same text still finds its directory, tokenizers/<digest of the
        # text and settings>, complete. Whether the model needs one is decided at run time:
        # model_config may be a YAML on gs:// that only a step can read; a character config
        # returns "" at once, and a cached step costs nothing on the next run.
        tokenizer = train_tokenizer(
            source=shards.outputs["out_dir"],
            data_root=data_root,
            config=model_config,
            vocab_size=tokenizer_vocab_size,
        )
        placement.place_data_step(tokenizer, "train-tokenizer", dataset_label)

        # Cached, and written once per text, tokenizer and order under lms/<digest>; returns
        # "" at once for lm_order 0 or a character model (no tokenizer).
        lm = train_lm(
            dataset_dir=shards.outputs["out_dir"],
            tokenizer_dir=tokenizer.outputs["Output"],
            data_root=data_root,
            extra_sources=lm_text_sources,
            order=lm_order,
        )
        placement.place_data_step(lm, "train-lm", dataset_label)

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
            data_root=data_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            bucket_bins=bins.outputs["Output"],  # an input, not a file another step may rewrite
            tokenizer_dir=tokenizer.outputs["Output"],
            **{setting: arguments[name] for name, setting in TRAINING_PARAMETERS.items()},
            **mix_args,
        )
        with dsl.If(num_nodes > 1, name="multi-node"):
            multi = launch_trainjob(**train_args, gpu=gpu, precision=pool.precision)
            placement.place_launcher_step(multi, "train", dataset_label)
        with dsl.Else(name="one-node"):
            single = train(**train_args, devices=gpus, precision="" if local else pool.precision)
            placement.place_gpu_step(single, "train", gpu, gpus, dataset_label)
        model_uri = dsl.OneOf(multi.outputs["model_uri"], single.outputs["model_uri"])

        scores = evaluate(
            model_uri=model_uri,
            eval_sets=dsl.Collected(prepared.outputs["eval_set"]),
            data_root=data_root,
            run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            champion_name=champion_name,
            max_wer=max_wer,
            validation_set=validation.outputs["eval_set"],
            lm_dir=lm.outputs["Output"],
            lm_alpha=lm_alpha,
            tune_lm_alpha=tune_lm_alpha,
            beam_size=lm_beam_size,
        )
        placement.place_gpu_step(scores, "evaluate", gpu, 1, dataset_label, retry=placement.EVALUATE_RETRY)
        if local:
            tasks = (
                *source_tasks,
                bins,
                tokenizer,
                lm,
                validation,
                prepared,
                multi,
                single,
                scores,
            )
            for task in tasks:
                task.set_retry(0)
        return scores.outputs["card"]

    if mixture:
        prepare_source = _prepare_source_pipeline(local)
    else:  # the one-source DAG: the mixture's parameters are not the pipeline's
        signature = inspect.signature(asr_training)
        asr_training.__signature__ = signature.replace(
            parameters=[p for p in signature.parameters.values() if p.name not in MIXTURE_PARAMETERS]
        )
        asr_training.__doc__ = _without_parameters(asr_training.__doc__ or "", MIXTURE_PARAMETERS)
    return dsl.pipeline(name=PIPELINE_NAME, description=pipeline_description(asr_training))(asr_training)


def _without_parameters(doc: str, names: tuple[str, ...]) -> str:
    """A Google-style docstring without the ``Args:`` entries of ``names`` (and their lines)."""
    kept, skipping = [], False
    for line in doc.splitlines():
        stripped = line.strip()
        entry = stripped.split(":", 1)[0] if ":" in stripped else ""
        if line.startswith(" " * 12) and not line.startswith(" " * 16) and entry:
            skipping = entry in names
        elif not line.startswith(" " * 16):
            skipping = False
        if not skipping:
            kept.append(line)
    return "\n".join(kept)


# --- the parameter guide: KFP 2.17's run form shows only `name - type` ------------------------

README_BEGIN = "<!-- parameters begin -->"
README_END = "<!-- parameters end -->"


def _short(value: object) -> str:
    """A default as a person reads it in a table: eval-set objects by their names."""
    if isinstance(value, dict) and "name" in value:
        return f"{{name: {value['name']}, …}}"
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return json.dumps(value)


def parameter_guide(pipeline_func) -> list[dict[str, str]]:
    """Name, type, default and meaning of each pipeline parameter, from its signature and
    docstring (the same text KFP puts in the compiled YAML's parameter descriptions)."""
    import docstring_parser

    meaning = {
        param.arg_name: " ".join((param.description or "").split())
        for param in docstring_parser.parse(pipeline_func.__doc__ or "").params
    }
    return [
        {
            "name": name,
            "type": getattr(param.annotation, "__name__", str(param.annotation)),
            "default": _short(param.default),
            "description": meaning.get(name, ""),
        }
        for name, param in inspect.signature(pipeline_func).parameters.items()
    ]


def pipeline_description(pipeline_func) -> str:
    """What the KFP UI shows of the pipeline: its purpose and every parameter's meaning."""
    summary = (pipeline_func.__doc__ or "").strip().splitlines()[0]
    lines = [summary, "", "Parameters (the run form shows only their names and types):"]
    lines += [
        f"- {row['name']} ({row['type']}, default {row['default']}): {row['description']}"
        for row in parameter_guide(pipeline_func)
    ]
    return "\n".join(lines)


def parameter_table(pipeline_func) -> str:
    """The guide as the Markdown table README.md carries between its parameter markers."""
    rows = ["| parameter | type | default | meaning |", "|---|---|---|---|"]
    for row in parameter_guide(pipeline_func):
        cells = [f"`{row['name']}`", row["type"], f"`{row['default']}`", row["description"]]
        rows.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(rows)


def write_readme_table(readme: Path) -> None:
    """Put :func:`parameter_table` between README's parameter markers."""
    text = readme.read_text(encoding="utf-8")
    head, begin, rest = text.partition(README_BEGIN)
    _, end, tail = rest.partition(README_END)
    if not (begin and end):
        raise ValueError(f"{readme} has no {README_BEGIN} … {README_END} markers")
    table = parameter_table(asr_training.pipeline_func)
    readme.write_text(f"{head}{README_BEGIN}\n{table}\n{README_END}{tail}", encoding="utf-8")


asr_training = build_pipeline()


def compile_pipeline(
    out: str, gpu: str = "v100", gpus_per_node: int | None = None, mixture: bool = False
) -> Path:
    """Compile the pipeline for one GPU pool to ``out`` (YAML); ``mixture``: the mixture variant."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build_pipeline(gpu, gpus_per_node, mixture=mixture), package_path=str(path))
    return path


if __name__ == "__main__":
    import sys

    write_readme_table(Path(sys.argv[1] if len(sys.argv) > 1 else "README.md"))

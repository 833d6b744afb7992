"""The ``train`` and ``train_tokenizer`` KFP components: thin wrappers over :mod:`components.train.core`.

``train`` runs ``asrflow train`` in a child process on the task's own GPUs (DDP over the
GPUs of one node: Lightning starts the other ranks by re-running that command) and exits
with its status, so a preempted task (SIGTERM, exit 143) is retried by KFP and resumes from
its newest checkpoint. ``launch_trainjob`` runs the same command on several nodes through a
Kubeflow Trainer TrainJob (:mod:`pipelines.trainjob`).
"""

from typing import NamedTuple

from kfp import dsl

from components.images import DATA_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train(
    tarred_dir: str,
    val_manifest: str,
    data_root: str,
    run_id: str,
    card: dsl.Output[dsl.Artifact],
    metrics: dsl.Output[dsl.Metrics],
    curves: dsl.Output[dsl.HTML],
    config: str = "conformer_ctc_char",
    max_steps: int = 0,
    checkpoint_every: int = 0,
    overrides: list = [],  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
    bucket_bins: list = [],  # noqa: B006 - KFP needs a literal default
    init_from: str = "",
    freeze_encoder: bool = False,
    tokenizer_dir: str = "",
    devices: int = 0,
    num_nodes: int = 0,
    precision: str = "",
) -> NamedTuple("Outputs", [("model_uri", str)]):
    """Train a NeMo Conformer-CTC model on tarred shards; resume after preemption.

    Args:
        tarred_dir: the tarred dataset (write-shards output; bucket bins in its metadata.yaml).
        val_manifest: NeMo manifest validated on during training.
        data_root: the data root; the run writes to ``runs/<run_id>`` under it.
        run_id: the pipeline run (a retry of the same run resumes its checkpoints).
        card: the run's card: model URI, steps, hours seen, final train loss, val WER, throughput.
        metrics: val WER, final train loss, hours seen and throughput, for the KFP UI.
        curves: loss, validation WER, learning rate and throughput over the steps.
        config: a config under components/train/conf (conformer_ctc_char, conformer_ctc_bpe, small, tiny).
        max_steps: optimizer steps to train (0: the config's).
        checkpoint_every: steps between checkpoints (0: the config's).
        overrides: more config overrides, ``key=value`` each.
        seed: model-initialisation seed (-1: the config's); data order derives from it.
        bucket_bins: Lhotse duration bins (estimate-buckets' output); empty: those in
            metadata.yaml, else the config's.
        init_from: a .nemo model to start from (fine-tuning); empty for a fresh model.
        freeze_encoder: train the decoder only.
        tokenizer_dir: SentencePiece directory for a BPE config.
        devices: processes on this node, one per GPU (0: all GPUs, or 1 on CPU).
        num_nodes: nodes (0: 1, or what torchrun says).
        precision: Lightning precision (empty: bf16-mixed on A100, 16-mixed on V100, 32 on CPU).
    """
    import sys
    from collections import namedtuple

    from components.train import core

    run_dir = core.run_dir_for(data_root, run_id)
    argv = core.train_argv(
        tarred_dir,
        val_manifest,
        run_dir,
        config=config,
        overrides=overrides,
        max_steps=max_steps or None,
        seed=seed if seed >= 0 else None,
        bucket_bins=bucket_bins,
        checkpoint_every=checkpoint_every or None,
        init_from=init_from or None,
        freeze_encoder=freeze_encoder,
        tokenizer_dir=tokenizer_dir or None,
        devices=devices or None,
        num_nodes=num_nodes or None,
        precision=precision or None,
    )
    status = core.run_asrflow(argv)
    if status != 0:
        sys.exit(status)  # 143 after SIGTERM: KFP retries, the retry resumes
    result = core.write_run_outputs(run_dir, card.path, curves.path)
    card.metadata.update(uri=run_dir, model=result["model"])
    for key in ("val_wer", "final_train_loss", "hours_seen", "throughput_audio_s_per_s"):
        if result.get(key) is not None:
            metrics.log_metric(key, float(result[key]))
    return namedtuple("Outputs", ["model_uri"])(result["model"])


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def launch_trainjob(
    tarred_dir: str,
    val_manifest: str,
    data_root: str,
    run_id: str,
    num_nodes: int,
    gpu: str,
    card: dsl.Output[dsl.Artifact],
    curves: dsl.Output[dsl.HTML],
    config: str = "conformer_ctc_char",
    max_steps: int = 0,
    checkpoint_every: int = 0,
    overrides: list = [],  # noqa: B006 - KFP needs a literal default
    seed: int = -1,
    bucket_bins: list = [],  # noqa: B006 - KFP needs a literal default
    init_from: str = "",
    freeze_encoder: bool = False,
    tokenizer_dir: str = "",
) -> NamedTuple("Outputs", [("model_uri", str)]):
    """Train on several GPU nodes: a TrainJob runs ``asrflow train`` under torchrun on each.

    Args:
        tarred_dir: the tarred dataset (write-shards output).
        val_manifest: NeMo manifest validated on during training.
        data_root: the data root (gs://); the run writes to ``runs/<run_id>`` under it.
        run_id: the pipeline run; the TrainJob's name derives from it, so a retry re-attaches.
        num_nodes: GPU nodes.
        gpu: the GPU pool (``v100`` or ``a100``); its precision is used.
        card: the run's card (as the one-node train step writes it).
        curves: loss, validation WER, learning rate and throughput over the steps.
        config: a config under components/train/conf.
        max_steps: optimizer steps to train (0: the config's).
        checkpoint_every: steps between checkpoints (0: the config's).
        overrides: more config overrides, ``key=value`` each.
        seed: model-initialisation seed (-1: the config's).
        bucket_bins: Lhotse duration bins (estimate-buckets' output); empty: those in
            metadata.yaml, else the config's.
        init_from: a .nemo model to start from (fine-tuning).
        freeze_encoder: train the decoder only.
        tokenizer_dir: SentencePiece directory for a BPE config.
    """
    from collections import namedtuple

    from components.images import TRAIN_IMAGE
    from components.train import core
    from pipelines import placement, trainjob

    run_dir = core.run_dir_for(data_root, run_id)
    argv = core.train_argv(
        tarred_dir,
        val_manifest,
        run_dir,
        config=config,
        overrides=overrides,
        max_steps=max_steps or None,
        seed=seed if seed >= 0 else None,
        bucket_bins=bucket_bins,
        checkpoint_every=checkpoint_every or None,
        init_from=init_from or None,
        freeze_encoder=freeze_encoder,
        tokenizer_dir=tokenizer_dir or None,
        precision=placement.GPU_POOLS[gpu].precision,
    )
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace", encoding="utf-8") as stream:
        namespace = stream.read().strip()
    job = trainjob.build_trainjob(
        trainjob.trainjob_name(run_id), namespace, TRAIN_IMAGE, argv[1:], num_nodes, gpu, run_id
    )
    trainjob.run_trainjob(job)
    result = core.write_run_outputs(run_dir, card.path, curves.path)
    card.metadata.update(uri=run_dir, model=result["model"])
    return namedtuple("Outputs", ["model_uri"])(result["model"])


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_tokenizer(
    source: str,
    out_dir: str,
    card: dsl.Output[dsl.Artifact],
    vocab_size: int = 256,
    model_type: str = "bpe",
    seed: int = 0,
) -> str:
    """Train a SentencePiece tokenizer on a dataset's normalised text, for a BPE config.

    Args:
        source: a tarred directory (its tarred_audio_manifest.json) or a NeMo manifest.
        out_dir: where tokenizer.model and vocab.txt go; pass it to train as tokenizer_dir.
        card: the step's card: vocabulary size, sentences, characters.
        vocab_size: SentencePiece vocabulary size.
        model_type: ``bpe`` or ``unigram``.
        seed: SentencePiece's random seed.

    Returns:
        The tokenizer directory.
    """
    import json

    from components.train import core

    result = core.train_tokenizer(source, out_dir, vocab_size=vocab_size, model_type=model_type, seed=seed)
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata.update(uri=out_dir, vocab_size=result["vocab_size"])
    return out_dir

"""The ``train`` and ``train_tokenizer`` KFP components: thin wrappers over :mod:`components.train`.

``train`` runs ``asrflow train`` in a child process on the task's own GPUs (DDP over the
GPUs of one node: Lightning starts the other ranks by re-running that command) and exits
with its status, so a preempted task (SIGTERM, exit 143) is retried by KFP and resumes from
its newest checkpoint. Several nodes train through a Kubeflow Trainer TrainJob, launched by
a component on the cluster side.

The training parameters are the fields of :class:`~components.train.settings.TrainSettings`
(KFP reads a component's parameters from its literal signature; a test checks names, types
and defaults against the fields). KFP parameters cannot be None: 0, -1 or "" stand for
"not given" where the settings say so.
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
    train_last_layers: int = 0,
    tokenizer_dir: str = "",
    devices: int = 0,
    num_nodes: int = 0,
    precision: str = "",
    max_bad_shards: int = 0,
    stall_timeout: float = 30.0,
    weight: float = 1.0,
    mix: list = [],  # noqa: B006 - KFP needs a literal default
    mix_temperature: float = 1.0,
) -> NamedTuple("Outputs", [("model_uri", str)]):
    """Train a NeMo speech model on tarred shards, or fine-tune one; resume after preemption.

    Args:
        tarred_dir: the tarred dataset (write-shards output; bucket bins in its metadata.yaml).
        val_manifest: NeMo manifest validated on during training.
        data_root: the data root; the run writes to ``runs/<run_id>`` under it.
        run_id: the pipeline run (a retry of the same run resumes its checkpoints).
        card: the run's card: model URI, steps, hours seen, final train loss, val WER, throughput.
        metrics: val WER, final train loss, hours seen and throughput, for the KFP UI.
        curves: loss, validation WER, learning rate and throughput over the steps.
        config: a config under components/train/conf (e.g. conformer_ctc_char,
            fastconformer_rnnt_bpe, small_rnnt_bpe, finetune_small).
        max_steps: optimizer steps to train (0: the config's).
        checkpoint_every: steps between checkpoints (0: the config's).
        overrides: more config overrides, ``key=value`` each.
        seed: model-initialisation seed (-1: the config's); data order derives from it.
        bucket_bins: Lhotse duration bins (estimate-buckets' output); empty: those in
            metadata.yaml, else the config's.
        init_from: fine-tuning: a .nemo model (local or gs://) or a pretrained name on the
            Hugging Face hub (nvidia/…) to start from; its config gives the architecture,
            ``config`` the data, optim and trainer sections. Empty: a fresh model.
        freeze_encoder: train the decoder only (see train_last_layers).
        train_last_layers: with freeze_encoder, the last N encoder layers still train.
        tokenizer_dir: SentencePiece directory for a BPE config (train_tokenizer's output);
            with init_from it replaces the model's vocabulary; empty: the model's own.
        devices: processes on this node, one per GPU (0: all GPUs, or 1 on CPU).
        num_nodes: nodes (0: 1, or what torchrun says).
        precision: Lightning precision (empty: bf16-mixed on A100, 16-mixed on V100, 32 on CPU).
        max_bad_shards: damaged shards training may do without (listed in the card); one
            more fails the run.
        stall_timeout: minutes without a training or validation batch before the run fails
            (0: never).
        weight: tarred_dir's weight in a mixture with ``mix`` (a share of utterances).
        mix: more tarred datasets to train on, ``DIR=WEIGHT`` each: every next utterance comes
            from a source with probability proportional to its weight (NeMo's Lhotse
            ``input_cfg``); the card records the hours and
            utterances seen of each. Empty: tarred_dir alone.
        mix_temperature: NeMo's reweight_temperature T for a mixture: probabilities
            w**T / sum(w**T) (1: the weights as given; 0: equal).
    """
    arguments = dict(locals())  # the settings, by name (checked against TrainSettings' fields)
    import sys
    from collections import namedtuple

    from components import layout
    from components.train import launch
    from components.train.settings import TrainSettings

    run_dir = layout.run_dir(data_root, run_id)
    settings = TrainSettings.from_kfp(arguments, run_dir=run_dir)
    status = launch.run_training_process(["train", *settings.to_argv()])
    if status != 0:
        sys.exit(status)  # 143 after SIGTERM: KFP retries, the retry resumes
    result = launch.write_run_outputs(run_dir, card.path, curves.path)
    card.metadata.update(uri=run_dir, model=result.model)
    for key in ("val_wer", "final_train_loss", "hours_seen", "throughput_audio_s_per_s"):
        if getattr(result, key) is not None:
            metrics.log_metric(key, float(getattr(result, key)))
    return namedtuple("Outputs", ["model_uri"])(result.model)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def train_tokenizer(
    source: str,
    data_root: str,
    card: dsl.Output[dsl.Artifact],
    config: str = "conformer_ctc_char",
    vocab_size: int = 256,
    model_type: str = "bpe",
    seed: int = 0,
) -> str:
    """Train the SentencePiece tokenizer a sub-word (BPE) config needs, on the training text.

    A character config needs none: the step returns "" at once. The tokenizer goes to
    ``DATA_ROOT/tokenizers/<key>``, the key a digest of the normalised text and the settings,
    so a rerun on the same text reuses it.

    Args:
        source: the training data: a tarred directory (its tarred_audio_manifest.json) or a
            NeMo manifest.
        data_root: the data root; the tokenizer goes under ``tokenizers/`` in it.
        card: the step's card: vocabulary size, sentences, characters (or why no tokenizer).
        config: the training config (a name or a YAML): is it a sub-word model?
        vocab_size: SentencePiece vocabulary size; 0: no tokenizer (a fine-tuned sub-word
            model keeps its own).
        model_type: ``bpe`` or ``unigram``.
        seed: SentencePiece's random seed.

    Returns:
        The tokenizer directory for train's tokenizer_dir ("" when none).
    """
    import json

    from components.train.tokenizer import tokenizer_for_config

    out_dir, result = tokenizer_for_config(
        source, data_root, config, vocab_size=vocab_size, model_type=model_type, seed=seed
    )
    with open(card.path, "w", encoding="utf-8") as out:
        json.dump(result, out, sort_keys=True, indent=2)
    card.metadata.update(uri=out_dir, vocab_size=result.get("vocab_size", 0))
    return out_dir


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def weigh_source(tarred_dir: str, weight: float) -> str:
    """One source of a training mixture, as the ``DIR=WEIGHT`` item train and estimate-buckets take.

    Args:
        tarred_dir: the source's tarred dataset (merge-shards' output).
        weight: its weight in the mixture (above 0).

    Returns:
        ``DIR=WEIGHT``, for train's and estimate_buckets' ``mix`` lists.
    """
    from components.mixture import WeightedSource, check_weight

    return WeightedSource(tarred_dir, check_weight(weight, f"weight of {tarred_dir}")).item()


@dsl.component(base_image=DATA_IMAGE, install_kfp_package=False)
def check_mixture(tarred_dir: str, weight: float, mix: list, mix_temperature: float = 1.0) -> list:
    """Check a training mixture before its bins and training: weights, items, no source twice.

    Args:
        tarred_dir: the main source's tarred dataset.
        weight: its weight.
        mix: the other sources, ``DIR=WEIGHT`` each (weigh_source's outputs).
        mix_temperature: NeMo's reweight_temperature.

    Returns:
        ``mix``, in order: the list estimate_buckets and train take.
    """
    import logging

    from components import mixture

    sources = mixture.mixture_sources(tarred_dir, weight, mix)
    shares = mixture.probabilities([s.weight for s in sources], mixture.check_temperature(mix_temperature))
    for source, share in zip(sources, shares, strict=True):
        logging.getLogger("asrflow.mixture").warning(
            "%.1f%% of the utterances from %s", 100 * share, source.uri
        )
    return list(mix)

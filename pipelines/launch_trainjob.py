"""The ``launch_trainjob`` KFP component: training on several GPU nodes through a TrainJob.

A thin wrapper over :mod:`pipelines.trainjob`: it runs in the data image on the CPU pool,
creates (or re-attaches to) a Kubeflow Trainer TrainJob that runs ``asrflow train`` under
torchrun on every node, waits for it, and writes the run's card and curves as the one-node
``train`` component does. Its training parameters are the fields of
:class:`~components.train.settings.TrainSettings` but ``devices`` (torchrun starts one
process per GPU of the pool); a test checks them against the fields.
"""

from typing import NamedTuple

from kfp import dsl

from components.images import DATA_IMAGE


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
    train_last_layers: int = 0,
    tokenizer_dir: str = "",
    precision: str = "",
    max_bad_shards: int = 0,
    stall_timeout: float = 30.0,
    weight: float = 1.0,
    mix: list = [],  # noqa: B006 - KFP needs a literal default
    mix_temperature: float = 1.0,
) -> NamedTuple("Outputs", [("model_uri", str)]):
    """Train on several GPU nodes: a TrainJob runs ``asrflow train`` under torchrun on each.

    Args:
        tarred_dir: the tarred dataset (write-shards output).
        val_manifest: NeMo manifest validated on during training.
        data_root: the data root (gs://); the run writes to ``runs/<run_id>`` under it.
        run_id: the pipeline run; the TrainJob's name derives from it, so a retry re-attaches.
        num_nodes: GPU nodes.
        gpu: the GPU pool (``v100`` or ``a100``): node selector, tolerations, GPUs per node.
        card: the run's card (as the one-node train step writes it).
        curves: loss, validation WER, learning rate and throughput over the steps.
        config: a config under components/train/conf.
        max_steps: optimizer steps to train (0: the config's).
        checkpoint_every: steps between checkpoints (0: the config's).
        overrides: more config overrides, ``key=value`` each.
        seed: model-initialisation seed (-1: the config's).
        bucket_bins: Lhotse duration bins (estimate-buckets' output); empty: those in
            metadata.yaml, else the config's.
        init_from: fine-tuning: a .nemo model (gs://) or a pretrained name on the Hugging
            Face hub (nvidia/…) to start from; its config gives the architecture.
        freeze_encoder: train the decoder only (see train_last_layers).
        train_last_layers: with freeze_encoder, the last N encoder layers still train.
        tokenizer_dir: SentencePiece directory for a BPE config (train_tokenizer's output);
            with init_from it replaces the model's vocabulary; empty: the model's own.
        precision: Lightning precision: the GPU pool's (empty: chosen by the GPUs found).
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
    from collections import namedtuple

    from components import layout
    from components.images import TRAIN_IMAGE
    from components.train.launch import write_run_outputs
    from components.train.settings import TrainSettings
    from pipelines import trainjob

    run_dir = layout.run_dir(data_root, run_id)
    # devices and nodes: from torchrun's environment on each node
    settings = TrainSettings.from_kfp(arguments, run_dir=run_dir, num_nodes=None)
    job = trainjob.build_trainjob(
        trainjob.trainjob_name(run_id),
        trainjob.pod_namespace(),
        TRAIN_IMAGE,
        settings.to_argv(),
        num_nodes,
        gpu,
        run_id,
    )
    trainjob.run_trainjob(job)
    result = write_run_outputs(run_dir, card.path, curves.path)
    card.metadata.update(uri=run_dir, model=result.model)
    return namedtuple("Outputs", ["model_uri"])(result.model)

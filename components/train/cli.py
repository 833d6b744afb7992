"""``asrflow train`` and ``asrflow train-tokenizer``: forward to :mod:`components.train.core`."""

from __future__ import annotations

import sys

import click

PRECISIONS = ["32", "16-mixed", "bf16-mixed", "32-true", "bf16-true", "16-true"]


@click.command("train", context_settings={"ignore_unknown_options": False})
@click.argument("tarred_dir")
@click.argument("overrides", nargs=-1, metavar="[KEY=VALUE]...")
@click.option(
    "--val",
    "val_manifest",
    required=True,
    metavar="MANIFEST",
    help="NeMo manifest validated on during training (local or gs://; relative audio paths are "
    "resolved against its directory).",
)
@click.option(
    "--config",
    default="conformer_ctc_char",
    show_default=True,
    metavar="NAME|YAML",
    help="A shipped config (conformer_ctc_char, conformer_ctc_bpe, small, tiny) or a YAML file.",
)
@click.option(
    "--run-dir",
    required=True,
    metavar="DIR",
    help="The run's directory (local or gs://): checkpoints/, tensorboard/, model.nemo, card.json. "
    "A rerun with the same DIR resumes from its newest complete checkpoint.",
)
@click.option(
    "--checkpoint-every",
    type=click.IntRange(min=1),
    metavar="N",
    help="Steps between checkpoints (default: asrflow.checkpoint_every in the config).",
)
@click.option(
    "--init-from",
    metavar="MODEL.nemo",
    help="Start from this model's weights (local or gs://): fine-tuning. Ignored on resume.",
)
@click.option("--freeze-encoder", is_flag=True, help="Train the decoder only; the encoder stays as loaded.")
@click.option(
    "--tokenizer",
    "tokenizer_dir",
    metavar="DIR",
    help="SentencePiece directory from train-tokenizer, for a BPE config (model.tokenizer.dir).",
)
@click.option(
    "--devices",
    type=click.IntRange(min=1),
    help="Processes per node: GPUs, or CPU processes (DDP over gloo). Default: torchrun's "
    "LOCAL_WORLD_SIZE, else all GPUs, else 1.",
)
@click.option(
    "--num-nodes",
    type=click.IntRange(min=1),
    help="Nodes (default: from torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE, else 1).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="Default by hardware: bf16-mixed on A100 and newer, 16-mixed on V100, 32 on CPU.",
)
@click.option(
    "--max-bad-shards",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    metavar="N",
    help="Damaged shards (found before training, or unreadable during it) that training may do "
    "without; they are listed in the card. One more fails the run, naming the shard.",
)
@click.option(
    "--stall-timeout",
    type=click.FloatRange(min=0),
    default=30.0,
    show_default=True,
    metavar="MINUTES",
    help="Fail the run when no training or validation batch arrives for this long (0: never).",
)
def train(
    tarred_dir: str,
    overrides: tuple[str, ...],
    val_manifest: str,
    config: str,
    run_dir: str,
    checkpoint_every: int | None,
    init_from: str | None,
    freeze_encoder: bool,
    tokenizer_dir: str | None,
    devices: int | None,
    num_nodes: int | None,
    precision: str | None,
    max_bad_shards: int,
    stall_timeout: float,
) -> None:
    """Train a NeMo Conformer-CTC model on TARRED_DIR (from write-shards) to trainer.max_steps.

    TARRED_DIR is local or gs://; shards on gs:// are streamed into NeMo's Lhotse reader
    through a pipe: command (python -m components.train.cat), never copied whole.

    KEY=VALUE items override the config (OmegaConf dotlist), e.g. trainer.max_steps=20000
    model.optim.lr=1.5 model.train_ds.batch_duration=900. Multi-node: run under torchrun
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, NODE_RANK come from it).

    Every shard is checked before training (sizes, tar headers); a damaged one fails the run
    with its name unless --max-bad-shards allows it.

    Exit status: 0 with model.nemo, card.json and _SUCCESS in RUN_DIR once max_steps is
    reached; 143 when stopped by SIGTERM before (after a checkpoint when a step can end
    within seconds), so a retry resumes; 1 on errors (damaged shards, no progress for
    --stall-timeout). The card is printed as the last line of stdout.
    """
    from components.train.callbacks import Preempted
    from components.train.core import TrainError
    from components.train.core import train as run_train

    try:
        run_train(
            tarred_dir,
            val_manifest,
            run_dir,
            config=config,
            overrides=overrides,
            checkpoint_every=checkpoint_every,
            init_from=init_from,
            freeze_encoder=freeze_encoder,
            tokenizer_dir=tokenizer_dir,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            max_bad_shards=max_bad_shards,
            stall_timeout=stall_timeout * 60,
        )
    except Preempted as err:
        click.echo(f"asrflow train: {err}", err=True)
        sys.exit(err.exit_code)
    except TrainError as err:
        raise click.ClickException(str(err)) from None


@click.command("train-tokenizer")
@click.argument("source")
@click.option("--out", required=True, metavar="DIR", help="Output directory (local or gs://).")
@click.option(
    "--vocab-size",
    type=click.IntRange(min=2),
    default=256,
    show_default=True,
    help="SentencePiece vocabulary size.",
)
@click.option(
    "--type",
    "model_type",
    type=click.Choice(["bpe", "unigram"]),
    default="bpe",
    show_default=True,
    help="SentencePiece model type.",
)
@click.option(
    "--seed",
    type=int,
    default=0,
    show_default=True,
    help="SentencePiece's random seed: same text and seed give the same tokenizer bytes.",
)
def train_tokenizer(source: str, out: str, vocab_size: int, model_type: str, seed: int) -> None:
    """Train a SentencePiece tokenizer on the text of SOURCE for a BPE config.

    SOURCE is a tarred directory (its tarred_audio_manifest.json is read) or a NeMo
    manifest, local or gs://. Texts get the shared normalisation first. DIR receives
    tokenizer.model, vocab.txt, card.json and _SUCCESS; pass it to train as --tokenizer DIR.
    """
    from components.train.core import TrainError
    from components.train.core import train_tokenizer as run

    try:
        run(source, out, vocab_size=vocab_size, model_type=model_type, seed=seed)
    except TrainError as err:
        raise click.ClickException(str(err)) from None

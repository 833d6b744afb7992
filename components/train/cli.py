"""``asrflow train`` and ``asrflow train-tokenizer``: forward to :mod:`components.train.core`.

The options of ``asrflow train`` are made from the fields of
:class:`~components.train.settings.TrainSettings` (:func:`settings_parameters`), so the
command line, the settings and the arguments a KFP task passes
(:meth:`~components.train.settings.TrainSettings.to_argv`) cannot drift apart.

``python -m components.train`` is :data:`main`: these commands under the same error
handling as ``asrflow``; KFP tasks start training that way, and Lightning re-runs the same
command for the other DDP ranks.
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
from typing import Any

import click

from components.cli_errors import asrflow_group
from components.train.errors import TrainError
from components.train.settings import TrainSettings, flag, item_type, value_type


class CommaList(click.ParamType):
    """Values separated by commas, each of one type: ``1.5,3,7.25`` for numbers."""

    name = "list"

    def __init__(self, item: type) -> None:
        self.item = item

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (list, tuple)):
            return tuple(value)
        try:
            return tuple(self.item(item) for item in str(value).split(",") if item.strip())
        except ValueError:
            self.fail(f"{value!r} is not a comma-separated list of {self.item.__name__} values", param, ctx)


def settings_parameters(cls: type) -> list[click.Parameter]:
    """The click arguments and options of a settings dataclass, one per field, in field order.

    A field's :class:`~components.train.settings.Option` gives its flag, help, metavar,
    bounds (shown and checked by click's ranges and choices; the settings check them again
    for every other caller), and whether it is an argument.
    """
    params: list[click.Parameter] = []
    for field in dataclasses.fields(cls):
        how = field.metadata["option"]
        kind = value_type(cls, field)
        required = field.default is dataclasses.MISSING
        if how.positional:
            variadic = kind is tuple
            params.append(
                click.Argument(
                    [field.name], nargs=-1 if variadic else 1, required=required, metavar=how.metavar
                )
            )
            continue
        attrs: dict[str, Any] = {"help": how.help, "metavar": how.metavar, "required": required}
        if kind is bool:
            attrs.update(is_flag=True, default=field.default)
        elif how.repeat:
            attrs.update(type=item_type(cls, field), multiple=True, default=field.default)
        else:
            attrs["type"] = _click_type(cls, field)
            if not required:
                attrs["default"] = field.default
                attrs["show_default"] = field.default not in (None, ())
        params.append(click.Option([flag(field), field.name], **attrs))
    return params


def _click_type(cls: type, field: dataclasses.Field) -> click.ParamType:
    how, kind = field.metadata["option"], value_type(cls, field)
    if how.choices:
        return click.Choice(how.choices)
    if kind is int:
        return click.IntRange(min=how.min) if how.min is not None else click.INT
    if kind is float:
        return click.FloatRange(min=how.min) if how.min is not None else click.FLOAT
    if kind is tuple:
        return CommaList(item_type(cls, field))
    return click.STRING


def _train(**values: Any) -> None:
    """Train a NeMo speech model (CTC, RNN-T, TDT, hybrid: by --config) on TARRED_DIR to trainer.max_steps.

    TARRED_DIR is local or gs://; shards on gs:// are streamed into NeMo's Lhotse reader
    through a pipe: command (python -m components.train.cat), never copied whole.

    KEY=VALUE items override the config (OmegaConf dotlist), e.g. trainer.max_steps=20000
    model.optim.lr=1.5 model.train_ds.batch_duration=900; they win over the options that set
    config keys (--max-steps, --seed, --bucket-bins). Multi-node: run under torchrun
    (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE, LOCAL_RANK, NODE_RANK come from it).

    Every shard is checked before training (sizes, tar headers); a damaged one fails the run
    with its name unless --max-bad-shards allows it.

    Exit status: 0 with model.nemo, card.json and _SUCCESS in RUN_DIR once max_steps is
    reached; 143 when stopped by SIGTERM before (after a checkpoint when a step can end
    within seconds), so a retry resumes; 1 on errors (damaged shards, no progress for
    --stall-timeout). The card is printed as the last line of stdout.
    """
    from components.train.callbacks import Preempted
    from components.train.core import train as run_train

    try:
        run_train(TrainSettings(**values))
    except Preempted as err:
        click.echo(f"asrflow train: {err}", err=True)
        sys.exit(err.exit_code)
    except TrainError as err:
        raise click.ClickException(str(err)) from None


train = click.Command(
    "train", callback=_train, params=settings_parameters(TrainSettings), help=inspect.cleandoc(_train.__doc__)
)


def parse_train_args(args: list[str]) -> TrainSettings:
    """The settings ``asrflow train ARGS`` runs with (what a child process will parse)."""
    with train.make_context("train", list(args)) as ctx:
        return TrainSettings(**ctx.params)


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
    from components.train.tokenizer import train_tokenizer as run

    try:
        run(source, out, vocab_size=vocab_size, model_type=model_type, seed=seed)
    except TrainError as err:
        raise click.ClickException(str(err)) from None


@asrflow_group("python -m components.train")
def main() -> None:
    """asrflow's training commands, as KFP tasks and DDP ranks run them (asrflow train … is the same)."""


main.add_command(train)
main.add_command(train_tokenizer)

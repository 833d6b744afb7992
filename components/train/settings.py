"""The settings of a training run, declared once: :class:`TrainSettings`.

Everything else derives from its fields:

- the arguments and options of ``asrflow train`` (:func:`components.train.cli.settings_parameters`);
- the command line a KFP task or a TrainJob runs (:meth:`TrainSettings.to_argv`), which that
  CLI parses back into equal settings;
- the config overrides some settings stand for (:meth:`TrainSettings.config_overrides`);
- the KFP components' parameters: KFP reads them from the functions' literal signatures,
  so they are written out there and checked against these fields (:func:`kfp_type`,
  :func:`kfp_default`) by tests/components/test_train.py.

Each field carries an :class:`Option`: help, flag, bounds, the config key it sets and the
value that stands for "not given" in KFP (whose parameters cannot be None). The settings
come in groups, one dataclass each, combined by :class:`TrainSettings`; a model family or a
feature adds its fields to a group, or a group of its own to the bases of
:class:`TrainSettings`, and the CLI, the argv and the checks follow.

Light (the standard library and :mod:`components.train.config`'s names): the TrainJob
launcher imports it in the data image.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

from components import mixture
from components.train.config import config_names
from components.train.errors import TrainError

PRECISIONS = ("32", "16-mixed", "bf16-mixed", "32-true", "bf16-true", "16-true")
"""Lightning precisions a run may ask for."""
DEFAULT_CONFIG = "conformer_ctc_char"


@dataclasses.dataclass(frozen=True)
class Option:
    """How a settings field is given on the command line and in KFP, and what it may hold.

    Attributes:
        help: what the setting means (``--help``, and readers of the code).
        flag: its command-line flag; empty: ``--`` and the field's name with dashes. A bool
            is a flag that is off by default.
        positional: a command-line argument rather than an option (a tuple takes the rest).
        metavar: the placeholder ``--help`` shows for its value.
        min: the least value a number may have.
        choices: the values a string may have.
        unset: the KFP value that stands for None (0, -1 or "").
        config_key: the config key the setting sets: it becomes the override ``KEY=VALUE``,
            ahead of the explicit overrides (which win).
        repeat: a tuple given by repeating the option (``--mix A=1 --mix B=2``), one item
            each, instead of one comma-separated value.
    """

    help: str
    flag: str = ""
    positional: bool = False
    metavar: str | None = None
    min: float | None = None
    choices: tuple[str, ...] = ()
    unset: Any = None
    config_key: str = ""
    repeat: bool = False


def option(default: Any = dataclasses.MISSING, **how: Any) -> Any:
    """A settings field with its default (none: required) and its :class:`Option`."""
    return dataclasses.field(default=default, metadata={"option": Option(**how)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataSettings:
    """What the run trains and validates on."""

    tarred_dir: str = option(
        positional=True,
        metavar="TARRED_DIR",
        help="NeMo tarred dataset from write-shards (local or gs://).",
    )
    val_manifest: str = option(
        flag="--val",
        metavar="MANIFEST",
        help="NeMo manifest validated on during training (local or gs://; relative audio paths are "
        "resolved against its directory).",
    )
    bucket_bins: tuple[float, ...] = option(
        (),
        metavar="S1,S2,...",
        config_key="model.train_ds.bucket_duration_bins",
        help="Lhotse bucket duration bins in seconds (estimate-buckets' output). Default: those in "
        "TARRED_DIR/metadata.yaml, else the config's.",
    )
    max_bad_shards: int = option(
        0,
        min=0,
        metavar="N",
        help="Damaged shards (found before training, or unreadable during it) that training may do "
        "without; they are listed in the card. One more fails the run, naming the shard.",
    )
    weight: float = option(1.0, metavar="W", help=mixture.WEIGHT_HELP)
    mix: tuple[str, ...] = option((), repeat=True, metavar="DIR=WEIGHT", help=mixture.MIX_HELP)
    mix_temperature: float = option(1.0, min=0, metavar="T", help=mixture.TEMPERATURE_HELP)

    def sources(self) -> list[mixture.WeightedSource]:
        """TARRED_DIR with --weight, then each --mix source: what the run trains on."""
        return mixture.mixture_sources(self.tarred_dir, self.weight, self.mix)


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunSettings:
    """Where the run writes, which config it trains, and for how long."""

    run_dir: str = option(
        metavar="DIR",
        help="The run's directory (local or gs://): checkpoints/, tensorboard/, model.nemo, card.json. "
        "A rerun with the same DIR resumes from its newest complete checkpoint.",
    )
    config: str = option(
        DEFAULT_CONFIG,
        metavar="NAME|YAML",
        help=f"A shipped config ({', '.join(config_names())}) or a YAML file.",
    )
    overrides: tuple[str, ...] = option(
        (),
        positional=True,
        metavar="[KEY=VALUE]...",
        help="Config overrides (OmegaConf dotlist), applied after every other setting.",
    )
    max_steps: int | None = option(
        None,
        min=1,
        unset=0,
        metavar="N",
        config_key="trainer.max_steps",
        help="Optimizer steps to train (default: trainer.max_steps in the config).",
    )
    checkpoint_every: int | None = option(
        None,
        min=1,
        unset=0,
        metavar="N",
        help="Steps between checkpoints (default: asrflow.checkpoint_every in the config).",
    )
    seed: int | None = option(
        None,
        min=0,
        unset=-1,
        metavar="N",
        config_key="asrflow.seed",
        help="Model-initialisation seed; the data order derives from it (default: asrflow.seed "
        "in the config).",
    )
    stall_timeout: float = option(
        30.0,
        min=0,
        metavar="MINUTES",
        help="Fail the run when no training or validation batch arrives for this long (0: never).",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ModelSettings:
    """The model's vocabulary and where its weights start."""

    tokenizer_dir: str | None = option(
        None,
        flag="--tokenizer",
        unset="",
        metavar="DIR",
        help="SentencePiece directory from train-tokenizer, for a BPE config (model.tokenizer.dir). "
        "With --init-from a BPE model: its vocabulary becomes this one (change_vocabulary: the "
        "encoder's weights kept, a new decoder); without: the model keeps its own tokenizer.",
    )
    init_from: str | None = option(
        None,
        unset="",
        metavar="MODEL.nemo|ORG/NAME",
        help="Fine-tune: start from this model (a .nemo, local or gs://, or a pretrained name on the "
        "Hugging Face hub, e.g. nvidia/stt_en_fastconformer_ctc_large). Its own config gives the "
        "architecture; the run's config gives the data, optim and trainer sections. On resume the "
        "checkpoint gives the weights.",
    )
    freeze_encoder: bool = option(
        False, help="Train the decoder only; the encoder stays as loaded (see --train-last-layers)."
    )
    train_last_layers: int = option(
        0,
        min=0,
        metavar="N",
        help="With --freeze-encoder: the last N encoder layers still train (0: none).",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class HardwareSettings:
    """Processes, nodes and precision (each defaults to what the hardware or torchrun says)."""

    devices: int | None = option(
        None,
        min=1,
        unset=0,
        metavar="N",
        help="Processes per node: GPUs, or CPU processes (DDP over gloo). Default: torchrun's "
        "LOCAL_WORLD_SIZE, else all GPUs, else 1.",
    )
    num_nodes: int | None = option(
        None,
        min=1,
        unset=0,
        metavar="N",
        help="Nodes (default: from torchrun's WORLD_SIZE / LOCAL_WORLD_SIZE, else 1).",
    )
    precision: str | None = option(
        None,
        choices=PRECISIONS,
        unset="",
        help="Default by hardware: bf16-mixed on A100 and newer, 16-mixed on V100, 32 on CPU.",
    )


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainSettings(HardwareSettings, ModelSettings, RunSettings, DataSettings):
    """Everything ``asrflow train`` takes: data, run, model and hardware settings, in that order.

    Lists are kept as tuples; the settings are checked once, here, when made (a
    :class:`~components.train.errors.TrainError` names the flag and what is wrong).
    """

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            value = tuple(value) if isinstance(value, list) else value
            _check(type(self), field, value)
            object.__setattr__(self, field.name, _as_declared(type(self), field, value))
        bad = [item for item in self.overrides if "=" not in item]
        if bad:
            raise TrainError(f"overrides must be key=value, got: {' '.join(bad)}")
        check_freezing(self.freeze_encoder, self.train_last_layers)
        try:
            self.sources()
            mixture.check_temperature(self.mix_temperature)
        except mixture.MixtureError as err:
            raise TrainError(str(err)) from None

    @property
    def stall_timeout_s(self) -> float | None:
        """The stall timeout in seconds; None: never."""
        return self.stall_timeout * 60 or None

    def config_overrides(self) -> list[str]:
        """The overrides to apply to the config: those the settings stand for, then the explicit ones.

        E.g. ``max_steps=9`` is ``trainer.max_steps=9``; an explicit ``trainer.max_steps=…``
        comes later and wins.
        """
        derived = [
            f"{_option(field).config_key}={_text(value, list_brackets=True)}"
            for field in dataclasses.fields(self)
            if _option(field).config_key and (value := getattr(self, field.name)) not in (None, ())
        ]
        return derived + list(self.overrides)

    def to_argv(self) -> list[str]:
        """The arguments after ``asrflow train`` that give these settings.

        Only what differs from the defaults is spelt out; ``components.train.cli`` parses
        the result back into equal settings.
        """
        fields = dataclasses.fields(self)
        args = [getattr(self, f.name) for f in fields if _option(f).positional and not _is_tuple(self, f)]
        for field in fields:
            value = getattr(self, field.name)
            required = field.default is dataclasses.MISSING
            if _option(field).positional or (value == field.default and not required):
                continue
            if value is True:
                args.append(flag(field))
            elif _option(field).repeat:
                for item in value:
                    args += [flag(field), _text(item)]
            elif value is not None and value != ():
                args += [flag(field), _text(value)]
        for field in fields:
            if _option(field).positional and _is_tuple(self, field):
                args += list(getattr(self, field.name))
        return [str(arg) for arg in args]

    @classmethod
    def from_kfp(cls, params: Mapping[str, Any], **given: Any) -> TrainSettings:
        """Settings from a KFP component's parameters (where ``unset`` values mean None).

        Args:
            params: the component's arguments (its ``locals()``); names that are not
                settings (data_root, outputs, …) are left out.
            given: settings the component works out itself (``run_dir``); these win.
        """
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            if field.name in given:
                values[field.name] = given[field.name]
            elif field.name in params:
                value, unset = params[field.name], _option(field).unset
                values[field.name] = None if unset is not None and value == unset else value
        return cls(**values)


def check_freezing(freeze_encoder: bool, train_last_layers: int) -> None:
    """``--train-last-layers`` only means something under ``--freeze-encoder``."""
    if train_last_layers and not freeze_encoder:
        raise TrainError("--train-last-layers needs --freeze-encoder (the other layers train anyway)")


def flag(field: dataclasses.Field) -> str:
    """The command-line flag of a settings field."""
    return _option(field).flag or "--" + field.name.replace("_", "-")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def value_type(cls: type, field: dataclasses.Field) -> type:
    """The type of a field's values without ``None``: str, int, float, bool or tuple."""
    hint = _hints(cls)[field.name]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.get_origin(hint) or hint


def item_type(cls: type, field: dataclasses.Field) -> type:
    """The type of the items of a tuple field (``tuple[float, ...]``: float)."""
    return typing.get_args(_hints(cls)[field.name])[0]


def kfp_type(cls: type, field: dataclasses.Field) -> type:
    """The type a KFP parameter for this field has: a tuple is a ``list``."""
    kind = value_type(cls, field)
    return list if kind is tuple else kind


def kfp_default(field: dataclasses.Field) -> Any:
    """The default a KFP parameter for this field has: ``unset`` for None, a list for a tuple."""
    if field.default is None:
        return _option(field).unset
    return list(field.default) if isinstance(field.default, tuple) else field.default


def _option(field: dataclasses.Field) -> Option:
    return field.metadata["option"]


def _is_tuple(settings: Any, field: dataclasses.Field) -> bool:
    return value_type(type(settings), field) is tuple


def _text(value: Any, list_brackets: bool = False) -> str:
    """A value as the command line and OmegaConf's dotlist spell it (floats exactly)."""
    if isinstance(value, tuple):
        items = ",".join(_text(item) for item in value)
        return f"[{items}]" if list_brackets else items
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _check(cls: type, field: dataclasses.Field, value: Any) -> None:
    """Raise a TrainError naming the flag when ``value`` does not fit the field."""
    how = _option(field)
    if value is None:
        if field.default is dataclasses.MISSING:
            raise TrainError(f"{flag(field)} is required")
        return
    kind = value_type(cls, field)
    items = value if kind is tuple else (value,)
    expected = item_type(cls, field) if kind is tuple else kind
    for item in items:
        if not _is_a(item, expected):
            raise TrainError(f"{flag(field)} takes {expected.__name__} values, got {item!r}")
        if how.min is not None and item < how.min:
            raise TrainError(f"{flag(field)} must be {how.min:g} or more, got {item}")
        if how.choices and item not in how.choices:
            raise TrainError(f"{flag(field)} must be one of {', '.join(how.choices)}; got {item!r}")


def _as_declared(cls: type, field: dataclasses.Field, value: Any) -> Any:
    """A checked value with the declared number type: 30 for a float field is 30.0."""
    kind = value_type(cls, field)
    if kind is float and value is not None:
        return float(value)
    if kind is tuple and item_type(cls, field) is float:
        return tuple(float(item) for item in value)
    return value


def _is_a(value: Any, kind: type) -> bool:
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)

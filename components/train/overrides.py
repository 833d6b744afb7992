"""``KEY=VALUE`` overrides of a training config, checked before they are applied.

OmegaConf merges any dotlist into a config: ``trainer.max_step=10`` (a typo) adds a key that
nothing reads, and ``model.optim.lr=abc`` fails deep inside the optimizer. Here each
override is checked first, so a mistake is one line that names the override:

- the key must exist in the config; or, for a user's YAML, in a config asrflow ships (keys
  asrflow itself passes, such as ``asrflow.seed`` or ``model.train_ds.bucket_duration_bins``,
  that the YAML may lack); or be an argument of Lightning's ``Trainer`` (``trainer.*``). A
  misspelt key gets the closest existing one as a suggestion. ``+KEY=VALUE`` adds a key the
  config lacks, as in Hydra (e.g. a Lhotse option under ``model.train_ds``);
- the value must have the type of the value it replaces: a number for a number, true or
  false for a flag, a list for a list, a section for a section; ``null`` and ``${…}``
  interpolations go anywhere;
- Trainer arguments that asrflow sets itself (devices, precision, …) are refused with the
  option to use instead: an override of them would be lost.
"""

from __future__ import annotations

import difflib
import functools
import json
from typing import TYPE_CHECKING, Any

from components.train.config import config_names, load_config
from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig


class ConfigError(TrainError):
    """An override that names no key of the config, or gives a value of the wrong type."""


# Trainer arguments that asrflow sets itself (hardware.make_trainer): an override would be lost.
TRAINER_SET_BY_ASRFLOW = {
    "devices": "use --devices",
    "num_nodes": "use --num-nodes",
    "precision": "use --precision",
    "accelerator": "it follows the hardware",
    "strategy": "DDP follows --devices and --num-nodes",
    "max_epochs": "training runs to trainer.max_steps",
    "resume_from_checkpoint": "a rerun with the same --run-dir resumes",
    "default_root_dir": "outputs go to --run-dir",
    "enable_checkpointing": "use --checkpoint-every",
    "enable_progress_bar": "progress is logged as lines",
    "logger": "asrflow logs to RUN_DIR/tensorboard",
    "callbacks": "asrflow sets them",
    "plugins": "asrflow sets them (its checkpoint I/O)",
}


def checked_override(cfg: DictConfig, item: str, config: str) -> tuple[str, Any]:
    """Check ``KEY=VALUE`` (or ``+KEY=VALUE``) against ``cfg``; returns the key and the value.

    Args:
        cfg: the config as loaded so far (earlier overrides applied).
        item: the override as given.
        config: the config's name or path, for messages.

    Raises:
        ConfigError: naming the override, what is wrong and, for a misspelt key, the closest.
    """
    from omegaconf import OmegaConf

    spelled, _, text = item.partition("=")
    adding = spelled.startswith("+")
    key = spelled.lstrip("+")
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"override {item}: {key!r} is not a dotted key such as trainer.max_steps")
    if parts[0] == "trainer" and len(parts) == 2 and parts[1] in TRAINER_SET_BY_ASRFLOW:
        reason = TRAINER_SET_BY_ASRFLOW[parts[1]]
        raise ConfigError(f"override {item}: asrflow sets trainer.{parts[1]} itself; {reason}")
    value = OmegaConf.to_container(OmegaConf.from_dotlist([f"value={text}"]), resolve=False)["value"]
    tree = OmegaConf.to_container(cfg, resolve=False)
    found, old, depth = lookup(tree, parts)
    if not found and config not in config_names():  # a user's YAML
        for shipped in shipped_config_trees():
            found, old, _ = lookup(shipped, parts)
            if found:
                break
    if not found:
        if depth < len(parts) - 1 or not (adding or is_trainer_argument(parts)):
            _refuse_unknown(item, parts, tree, depth, config, adding)
        return key, value
    expected = expected_type(old, value)
    if expected:
        raise ConfigError(
            f"override {item}: {key} takes {expected}, not {_shown(value)} "
            f"(config {config} has {key}: {_shown(old)})"
        )
    return key, value


def lookup(tree: Any, parts: list[str]) -> tuple[bool, Any, int]:
    """(found, value, how many leading parts exist) for a dotted key in a plain config tree."""
    node = tree
    for depth, part in enumerate(parts):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None, depth
    return True, node, len(parts)


def _refuse_unknown(item: str, parts: list[str], tree: Any, depth: int, config: str, adding: bool) -> None:
    _, parent, _ = lookup(tree, parts[:depth])
    where = ".".join(parts[: depth + 1])
    section = ".".join(parts[:depth])
    if isinstance(parent, list):
        raise ConfigError(
            f"override {item}: {section} is a list of {len(parent)}, with no item {parts[depth]}"
        )
    if depth and parent is None and not adding:
        raise ConfigError(f"override {item}: config {config} has {section}: null; to fill it, write +{item}")
    if depth and not isinstance(parent, dict):
        raise ConfigError(f"override {item}: config {config} has a value at {section}, not a section")
    candidates = list(parent) if isinstance(parent, dict) else []
    if parts[:depth] == ["trainer"]:
        candidates += [name for name in trainer_arguments() if name not in TRAINER_SET_BY_ASRFLOW]
    close = difflib.get_close_matches(parts[depth], candidates, n=1, cutoff=0.6)
    hint = f" (did you mean {'.'.join([*parts[:depth], close[0], *parts[depth + 1 :]])}?)" if close else ""
    if adding:  # +a.b.c where a.b is missing too
        raise ConfigError(f"override {item}: config {config} has no section {where}{hint}")
    raise ConfigError(f"override {item}: config {config} has no key {where}{hint}; to add it, write +{item}")


@functools.cache
def trainer_arguments() -> tuple[str, ...]:
    """The keyword arguments of Lightning's Trainer: what ``trainer.*`` may set."""
    import inspect

    import lightning.pytorch as pl

    return tuple(name for name in inspect.signature(pl.Trainer.__init__).parameters if name != "self")


def is_trainer_argument(parts: list[str]) -> bool:
    """True for ``trainer.NAME`` where NAME is a Trainer argument (asrflow's configs omit many)."""
    return len(parts) == 2 and parts[0] == "trainer" and parts[1] in trainer_arguments()


@functools.cache
def shipped_config_trees() -> tuple[dict[str, Any], ...]:
    """The shipped configs, composed, as plain trees (interpolations unresolved)."""
    from omegaconf import OmegaConf

    return tuple(OmegaConf.to_container(load_config(name), resolve=False) for name in config_names())


def expected_type(old: Any, new: Any) -> str | None:
    """What ``new`` should be to replace ``old`` in a config, or None when it fits."""
    if old is None or new is None or old == "???":
        return None
    if any(isinstance(v, str) and "${" in v for v in (old, new)):
        return None
    if isinstance(old, bool):
        return None if isinstance(new, bool) else "true or false"
    if isinstance(old, (int, float)):
        return None if isinstance(new, (int, float)) and not isinstance(new, bool) else "a number"
    if isinstance(old, str):
        return None if not isinstance(new, (dict, list)) else "a single value"
    if isinstance(old, list):
        return None if isinstance(new, list) else "a list such as [1, 2]"
    if isinstance(old, dict):
        return None if isinstance(new, dict) else "a section such as {key: value}"
    return None


def _shown(value: Any, limit: int = 40) -> str:
    """A value for a message: strings quoted, the rest as in YAML flow style, cut to ``limit``."""
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"

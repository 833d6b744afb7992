"""Training: NeMo Conformer-CTC on tarred shards, DDP, resumable checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import storage

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")

CONF_DIR = Path(__file__).parent / "conf"


class TrainError(RuntimeError):
    """A training run that cannot start or go on; the message says why."""


def config_names() -> list[str]:
    """The configs that ship with asrflow (``--config NAME``)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a shipped config by name, or a YAML file (local or gs://), then apply overrides.

    Args:
        name_or_path: a name from :func:`config_names` or the path of a YAML file.
        overrides: OmegaConf dotlist items, ``key=value`` (``trainer.max_steps=100``).

    Raises:
        TrainError: unknown name, unreadable file, or a malformed override.
    """
    from omegaconf import OmegaConf

    if (CONF_DIR / f"{name_or_path}.yaml").is_file():
        text = (CONF_DIR / f"{name_or_path}.yaml").read_text()
    elif name_or_path.endswith((".yaml", ".yml")) and storage.exists(name_or_path):
        text = storage.read_text(name_or_path)
    else:
        raise TrainError(
            f"unknown config {name_or_path!r}: give one of {', '.join(config_names())} or a .yaml file"
        )
    cfg = OmegaConf.create(text)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise TrainError(f"overrides must be key=value, got: {' '.join(bad)}")
    if overrides:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
    return cfg


def is_bpe(cfg: DictConfig) -> bool:
    """True for a sub-word config (``model.tokenizer``), False for a character one."""
    return cfg.model.get("tokenizer") is not None


def build_model(cfg: DictConfig, trainer: Any = None) -> Any:
    """A fresh, untrained Conformer-CTC model for ``cfg`` (EncDecCTCModel or ...ModelBPE).

    The data loaders are not set up here (the configs defer them); ``train`` does that once
    it knows the data paths. The model can be saved at once with ``model.save_to(path)``.
    """
    from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE

    cls = EncDecCTCModelBPE if is_bpe(cfg) else EncDecCTCModel
    return cls(cfg=cfg.model, trainer=trainer)

"""The model a run trains: built from its config, initialised from a .nemo, its encoder frozen."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from components.train.config import is_bpe
from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")


def build_model(cfg: DictConfig, trainer: Any = None) -> Any:
    """A fresh, untrained Conformer-CTC model for ``cfg`` (EncDecCTCModel or ...ModelBPE).

    The data loaders are not set up here (the configs defer them); the run does that once it
    knows the data paths. The model can be saved at once with ``model.save_to(path)``.
    """
    from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE

    cls = EncDecCTCModelBPE if is_bpe(cfg) else EncDecCTCModel
    return cls(cfg=cfg.model, trainer=trainer)


def init_from_pretrained(model: Any, nemo_path: str) -> None:
    """Copy every weight whose name and shape match from a .nemo model into ``model``.

    Weights that do not fit (a decoder for another vocabulary) keep their fresh values; the
    log says which. Raises TrainError when nothing matches (not a compatible model).

    NeMo's own ``ModelPT.maybe_init_from_pretrained_checkpoint`` (``init_from_nemo_model``)
    does not do this job: it loads with ``load_state_dict(strict=False)``, which still fails
    on a weight of another shape (a new vocabulary's decoder: "size mismatch"), unless the
    caller already knows what to ``exclude``; it loads nothing, silently, from a model of
    another architecture; and it runs on global rank 0 only. Checked with NeMo 3.0.0.
    """
    from nemo.collections.asr.models import ASRModel

    pretrained = ASRModel.restore_from(nemo_path, map_location="cpu")
    source = pretrained.state_dict()
    target = model.state_dict()
    matched = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not matched:
        raise TrainError(f"{nemo_path}: no weight fits this model's architecture")
    model.load_state_dict(matched, strict=False)
    left = sorted({k.split(".")[0] for k in target if k not in matched})
    log.info(
        "initialised %d of %d tensors from %s%s",
        len(matched),
        len(target),
        nemo_path,
        f"; fresh: {', '.join(left)}" if left else "",
    )
    del pretrained


def freeze_encoder(model: Any) -> None:
    """Fix the encoder's weights (the :class:`~components.train.callbacks.FreezeEncoder`
    callback keeps its batch-norm statistics and dropout fixed too)."""
    model.encoder.freeze()
    log.info(
        "encoder frozen: training %d of %d parameters",
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        sum(p.numel() for p in model.parameters()),
    )

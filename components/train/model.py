"""The model a run trains: its family's NeMo class, built from its config."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from components.train.families import family_of

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")


def build_model(cfg: DictConfig, trainer: Any = None, where: str = "config") -> Any:
    """A fresh, untrained model for ``cfg``, of its family's NeMo class.

    The family (:func:`components.train.families.family_of`) comes from the config's
    structure: EncDecCTCModel or ...CTCModelBPE, EncDecRNNTBPEModel (RNN-T or TDT), or
    EncDecHybridRNNTCTCBPEModel. The data loaders are not set up here (the configs defer
    them); the run does that once it knows the data paths. The model can be saved at once
    with ``model.save_to(path)``.

    Raises:
        TrainError: a config of no family (naming ``where`` and the field).
    """
    family = family_of(cfg, where)
    log.info("model family %s (%s)", family.name, family.model_class.rpartition(".")[2])
    return family.nemo_class()(cfg=cfg.model, trainer=trainer)

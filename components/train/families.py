"""The model families asrflow trains, declared once: which NeMo class, tokens, loss, heads.

A family is decided by a config's structure, not by a name in it, so that a config cannot
say one family and build another: sub-words when it has ``model.tokenizer``; a transducer
when it has ``model.joint`` (TDT when ``model.loss.loss_name`` is ``tdt``, RNN-T otherwise);
hybrid when it also has ``model.aux_ctc`` (a CTC head beside the transducer); CTC when it
has neither. :func:`family_of` says which family a config builds, :func:`family_of_model`
which family a loaded NeMo model is, and :func:`heads_of_model` which heads it can decode
with (for evaluation).

Heads are named as NeMo names decoders (``change_decoding_strategy(decoder_type=...)``):
``ctc`` or ``rnnt`` (a TDT head decodes as ``rnnt`` too). The first head is the model's own:
the one its validation WER (``val_wer``) and ``transcribe`` use.

Checked against nemo_toolkit 3.0.0: the RNN-T loss (numba's ``warprnnt_numba``, NeMo's
``default``) trains on CPU (there asrflow swaps in its vectorised equal,
:mod:`components.train.rnnt_loss`: NeMo's CPU path is a per-cell Python loop); the TDT loss
refuses CPU tensors ("TDT is not yet implemented for non CUDA computation"), so the TDT
families train on GPUs only (on CPU they build, run forward and decode).
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import TYPE_CHECKING, Any

from components.train.errors import TrainError

if TYPE_CHECKING:
    from omegaconf import DictConfig

CTC = "ctc"
RNNT = "rnnt"
TDT = "tdt"


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of model asrflow trains.

    Attributes:
        name: the family's name (on the train card).
        model_class: the NeMo class that builds it, ``module.Class``.
        tokens: ``char`` (``model.labels``) or ``bpe`` (SentencePiece, ``model.tokenizer``).
        loss: the main head's loss: ``ctc``, ``rnnt`` or ``tdt``.
        hybrid: True when a CTC head (``model.aux_ctc``) trains beside the transducer.
        trains_on_cpu: False when a loss has no CPU implementation (TDT).
        heads: the decoders it can transcribe with, its own first (NeMo's ``decoder_type``).
    """

    name: str
    model_class: str
    tokens: str
    loss: str
    hybrid: bool
    trains_on_cpu: bool
    heads: tuple[str, ...]

    def nemo_class(self) -> type:
        """The NeMo model class (imports NeMo)."""
        module, _, name = self.model_class.rpartition(".")
        return getattr(importlib.import_module(module), name)


_MODELS = "nemo.collections.asr.models"
FAMILIES: tuple[Family, ...] = (
    Family("ctc_char", f"{_MODELS}.EncDecCTCModel", "char", CTC, False, True, (CTC,)),
    Family("ctc_bpe", f"{_MODELS}.EncDecCTCModelBPE", "bpe", CTC, False, True, (CTC,)),
    Family("rnnt_bpe", f"{_MODELS}.EncDecRNNTBPEModel", "bpe", RNNT, False, True, (RNNT,)),
    Family("tdt_bpe", f"{_MODELS}.EncDecRNNTBPEModel", "bpe", TDT, False, False, (RNNT,)),
    Family(
        "hybrid_rnnt_ctc_bpe", f"{_MODELS}.EncDecHybridRNNTCTCBPEModel", "bpe", RNNT, True, True, (RNNT, CTC)
    ),
    Family(
        "hybrid_tdt_ctc_bpe", f"{_MODELS}.EncDecHybridRNNTCTCBPEModel", "bpe", TDT, True, False, (RNNT, CTC)
    ),
)
"""Every family asrflow trains or evaluates; a shipped config builds each but ``tdt_bpe`` (a
TDT-only transducer, as NVIDIA's parakeet-tdt models are: evaluated, not shipped)."""


def family_named(name: str) -> Family:
    """The family called ``name``; TrainError names the known ones otherwise."""
    for family in FAMILIES:
        if family.name == name:
            return family
    raise TrainError(f"unknown model family {name!r}: one of {', '.join(f.name for f in FAMILIES)}")


def family_of(cfg: DictConfig, where: str = "config") -> Family:
    """The family a training config builds, from its ``model`` section's structure.

    Args:
        cfg: a training config (``model``, ``trainer``, ...).
        where: the config's name or path, for the error message.

    Raises:
        TrainError: a structure no family has (a character transducer, a TDT loss without a
            TDT joint, an ``aux_ctc`` without a transducer), naming the field.
    """
    return family_of_model_config(cfg.model, where)


def family_of_model_config(model_cfg: Any, where: str = "config") -> Family:
    """:func:`family_of` for a ``model`` section (a NeMo model's own ``cfg`` too)."""
    tokens = "bpe" if model_cfg.get("tokenizer") is not None else "char"
    transducer = model_cfg.get("joint") is not None
    hybrid = model_cfg.get("aux_ctc") is not None
    loss_name = str((model_cfg.get("loss") or {}).get("loss_name", "default"))
    model_type = str((model_cfg.get("decoding") or {}).get("model_type", RNNT))
    if not transducer:
        if hybrid:
            raise TrainError(f"{where}: model.aux_ctc (a hybrid's CTC head) needs a transducer (model.joint)")
        loss = CTC
    elif (loss_name == TDT) != (model_type == TDT):
        raise TrainError(
            f"{where}: model.loss.loss_name is {loss_name!r} but model.decoding.model_type is "
            f"{model_type!r}: a TDT model needs both set to 'tdt'"
        )
    else:
        loss = TDT if loss_name == TDT else RNNT
    for family in FAMILIES:
        if (family.tokens, family.loss, family.hybrid) == (tokens, loss, hybrid):
            return family
    kind = f"{'hybrid ' if hybrid else ''}{loss.upper()} model with {tokens} tokens"
    raise TrainError(
        f"{where}: no model family for a {kind} (model.tokenizer / model.joint / model.aux_ctc); "
        f"asrflow trains {', '.join(f.name for f in FAMILIES)}"
    )


def heads_of_model(model: Any) -> tuple[str, ...]:
    """The decoders a NeMo ASR model instance transcribes with, its own first.

    ``("ctc",)``, ``("rnnt",)`` (RNN-T or TDT) or ``("rnnt", "ctc")`` (hybrid), by its class:
    for evaluation, ``model.change_decoding_strategy(decoder_type=head)`` picks one of a
    hybrid's. Any model of these classes has heads, whether or not a family describes it.

    Raises:
        TrainError: a model that is not a CTC, transducer or hybrid ASR model.
    """
    return _kind_of_model(model)[1]


def family_of_model(model: Any) -> Family | None:
    """The family of a NeMo ASR model instance (a restored ``.nemo``, pretrained or ours).

    Decided by its class (hybrid, transducer, CTC) and its config (TDT or RNN-T, char or
    sub-words). None for a model of these classes that no family describes (a character
    transducer): :func:`heads_of_model` still tells its heads.

    Raises:
        TrainError: a model that is not a CTC, transducer or hybrid ASR model.
    """
    model_cfg = model.cfg
    tokens = "bpe" if model_cfg.get("tokenizer") is not None else "char"
    loss, heads = _kind_of_model(model)
    hybrid = len(heads) > 1
    for family in FAMILIES:
        if (family.tokens, family.loss, family.hybrid) == (tokens, loss, hybrid):
            return family
    return None


def _kind_of_model(model: Any) -> tuple[str, tuple[str, ...]]:
    """A model's main loss (``ctc``, ``rnnt``, ``tdt``) and heads, from its class and config."""
    from nemo.collections.asr.models import EncDecCTCModel, EncDecHybridRNNTCTCModel, EncDecRNNTModel

    model_cfg = model.cfg
    if isinstance(model, EncDecRNNTModel):  # hybrids derive from it too
        is_tdt = TDT in (
            str((model_cfg.get("loss") or {}).get("loss_name", "")),
            str((model_cfg.get("decoding") or {}).get("model_type", "")),
        )
        heads = (RNNT, CTC) if isinstance(model, EncDecHybridRNNTCTCModel) else (RNNT,)
        return (TDT if is_tdt else RNNT), heads
    if isinstance(model, EncDecCTCModel):
        return CTC, (CTC,)
    raise TrainError(f"{type(model).__name__} is not a CTC, transducer or hybrid ASR model")

"""How a model's output becomes text: its decoding heads, greedy or beam search, the LM.

A NeMo ASR model has one head (CTC, or RNN-T) or two (a hybrid RNN-T + CTC model). Each head
is decoded greedily (``greedy_batch``) and, when asked, by beam search (CTC ``beam_batch``,
RNN-T ``malsd_batch``), with or without an n-gram LM (``ngram_lm_model`` and
``ngram_lm_alpha``) and key-phrase boosting (``boosting_tree``). The model's *served*
decoding, the main figure of an evaluation, is the head NeMo decodes with when the model is
restored (``cur_decoder`` of a hybrid, which NeMo sets to ``rnnt``), greedy.

What a model has is read from the .nemo archive's ``model_config.yaml`` (its family, by
:func:`components.train.families.family_of_model_config`, and its tokenizer), without
restoring the model: a rerun whose sets are all done loads no weights.
"""

from __future__ import annotations

import dataclasses
import logging
import tarfile
from typing import Any

from components.evaluate.errors import EvaluateError
from components.train import families
from components.train.errors import TrainError

log = logging.getLogger("asrflow.evaluate")

CTC = families.CTC
RNNT = families.RNNT
GREEDY_STRATEGY = "greedy_batch"
BEAM_STRATEGY = {CTC: "beam_batch", RNNT: "malsd_batch"}
"""NeMo's batched beam searches, the ones that take ``ngram_lm_model`` (NGramGPULanguageModel)."""
DEFAULT_BEAM_SIZE = 4
DEFAULT_BOOST_ALPHA = 1.0
"""Weight of the key-phrase boosting tree in the beam search score."""


@dataclasses.dataclass(frozen=True)
class LanguageModel:
    """An n-gram LM as decoding uses it.

    Attributes:
        uri: the file given (an ``lm.nemo`` or ``lm.arpa``, local or gs://).
        local_path: where NeMo reads it.
        md5: the file's MD5 (which LM made a set's hypotheses, for resume).
        vocab_size: the number of units it was built for (the model's output ids without blank).
        tokenizer: the tokenizer its train-lm card names ("" for a character model's labels).
        labels: the character model's labels it was built for (None: a tokenizer's pieces).
        labels_from: the .nemo or config those labels were read from.
        units_digest: the digest of its units (train-lm's card; "" in older cards).
    """

    uri: str
    local_path: str
    md5: str
    vocab_size: int
    tokenizer: str
    labels: tuple[str, ...] | None = None
    labels_from: str = ""
    units_digest: str = ""


@dataclasses.dataclass(frozen=True)
class Decoding:
    """One way to decode one head.

    Attributes:
        head: ``ctc`` or ``rnnt``.
        beam_size: 0 for greedy, else the beam search's beam.
        lm: the n-gram LM fused into the beam search (None: no LM).
        lm_alpha: its weight (``ngram_lm_alpha``).
        boost: key phrases boosted in the beam search (empty: none).
        boost_alpha: the boosting tree's weight.
    """

    head: str
    beam_size: int = 0
    lm: LanguageModel | None = None
    lm_alpha: float = 0.0
    boost: tuple[str, ...] = ()
    boost_alpha: float = DEFAULT_BOOST_ALPHA

    @property
    def strategy(self) -> str:
        return BEAM_STRATEGY[self.head] if self.beam_size else GREEDY_STRATEGY

    @property
    def key(self) -> str:
        """Its name in the card, the metrics and the output directory: ``ctc_greedy``, ``rnnt_beam_lm``."""
        if not self.beam_size:
            return f"{self.head}_greedy"
        return f"{self.head}_beam" + ("_lm" if self.lm else "")

    def describe(self) -> dict[str, Any]:
        """What the card records about it (and the resume marker: the same text, the same decoding)."""
        described: dict[str, Any] = {"head": self.head, "strategy": self.strategy}
        if self.beam_size:
            described["beam_size"] = self.beam_size
        if self.lm is not None:
            described.update(lm=self.lm.uri, lm_md5=self.lm.md5, lm_alpha=self.lm_alpha)
        if self.boost:
            described.update(boost_phrases=len(self.boost), boost_alpha=self.boost_alpha)
        return described

    def with_alpha(self, alpha: float) -> Decoding:
        return dataclasses.replace(self, lm_alpha=alpha)


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a .nemo holds, read from its config: the heads, the served one, the tokenizer.

    Attributes:
        model_class: the NeMo class named by the config's ``target``.
        heads: ``ctc`` and/or ``rnnt``, the served head first.
        served: the head NeMo decodes with after restoring the model.
        tokenizer_pieces: the SentencePiece vocabulary (None: a character model).
        labels: a character model's vocabulary (None: a sub-word model).
    """

    model_class: str
    heads: tuple[str, ...]
    served: str
    tokenizer_pieces: tuple[str, ...] | None
    labels: tuple[str, ...] | None

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer_pieces if self.tokenizer_pieces is not None else self.labels or ())


def heads_of_config(cfg: Any, where: str) -> tuple[tuple[str, ...], str]:
    """The heads a model config's family has and the served one: the family's own, first.

    Raises:
        EvaluateError: a model of no family asrflow knows.
    """
    try:
        heads = families.family_of_model_config(cfg, where).heads
    except TrainError as err:
        raise EvaluateError(str(err)) from None
    return heads, heads[0]


def read_model_info(local_path: str, shown_as: str | None = None) -> ModelInfo:
    """Heads and vocabulary of a .nemo archive, from its config and tokenizer, without restoring it."""
    import sentencepiece
    from omegaconf import OmegaConf

    from components import nemo_archive

    name = shown_as or local_path
    with tarfile.open(local_path, "r:*") as tar:
        config = nemo_archive.read_config(tar)
        if config is None:
            raise EvaluateError(f"{name} is not a .nemo archive (no model config in it)")
        cfg = OmegaConf.create(config.decode("utf-8"))
        pieces = None
        tokenizer_model = str(OmegaConf.select(cfg, "tokenizer.model_path", default="") or "")
        if tokenizer_model:
            proto = nemo_archive.read_file(tar, tokenizer_model.removeprefix("nemo:"))
            if proto is None:
                raise EvaluateError(f"{name}: its tokenizer {tokenizer_model} is not in the archive")
            processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
            pieces = tuple(processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    labels = None
    if pieces is None:
        vocabulary = OmegaConf.select(cfg, "decoder.vocabulary", default=None) or cfg.get("labels")
        labels = tuple(OmegaConf.to_container(vocabulary)) if vocabulary is not None else None
    heads, served = heads_of_config(cfg, name)
    return ModelInfo(
        model_class=str(cfg.get("target", "")),
        heads=heads,
        served=served,
        tokenizer_pieces=pieces,
        labels=labels,
    )


def check_served_head(model: Any, info: ModelInfo, shown_as: str) -> None:
    """The restored model decodes with the head its config said it would."""
    current = getattr(model, "cur_decoder", info.served)
    if current != info.served:
        raise EvaluateError(
            f"{shown_as}: NeMo restored it decoding with the {current} head, not {info.served} as "
            "its config says; cannot tell which head is served"
        )


def _beam_settings(decoding: Decoding, on_gpu: bool) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "beam_size": decoding.beam_size,
        "return_best_hypothesis": True,
        "ngram_lm_model": decoding.lm.local_path if decoding.lm else None,
        "ngram_lm_alpha": decoding.lm_alpha,
        "boosting_tree_alpha": decoding.boost_alpha if decoding.boost else 0.0,
    }
    if decoding.boost:
        # Triton kernels need a GPU; on CPU NeMo's boosting tree runs in plain torch.
        settings["boosting_tree"] = {"key_phrases_list": list(decoding.boost), "use_triton": on_gpu}
    return settings


def apply_decoding(model: Any, decoding: Decoding) -> None:
    """Make ``model.transcribe`` decode ``decoding.head`` with its strategy, beam, LM and boosting.

    Starts from the model's own decoding config for that head (``cfg.decoding``, or
    ``cfg.aux_ctc.decoding`` for a hybrid's CTC head), so that the model's other settings stay.
    """
    from nemo.utils import logging as nemo_logging
    from omegaconf import OmegaConf, open_dict

    hybrid = hasattr(model, "cur_decoder") and hasattr(model, "ctc_decoding")
    base = model.cfg.aux_ctc.decoding if hybrid and decoding.head == CTC else model.cfg.decoding
    cfg = OmegaConf.create(OmegaConf.to_container(base, resolve=True))
    with open_dict(cfg):
        cfg.strategy = decoding.strategy
        if decoding.beam_size:
            beam = OmegaConf.to_container(cfg.beam) if cfg.get("beam") else {}
            cfg.beam = {**beam, **_beam_settings(decoding, str(model.device).startswith("cuda"))}
    kwargs = {"decoder_type": decoding.head} if hybrid else {}
    verbosity = nemo_logging.get_verbosity()
    nemo_logging.set_verbosity(nemo_logging.WARNING)
    try:
        model.change_decoding_strategy(cfg, verbose=False, **kwargs)
    finally:
        nemo_logging.set_verbosity(verbosity)
    log.info("evaluate: decoding %s", ", ".join(f"{k}={v}" for k, v in decoding.describe().items()))

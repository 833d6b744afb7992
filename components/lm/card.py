"""The train-lm step's card."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from typing import ClassVar

from components.cards import Card
from components.lm import settings
from components.lm.settings import LABELS, TOKENIZER


def units_digest(symbols: Sequence[str]) -> str:
    """The digest of a vocabulary in id order: equal digests, the same units."""
    return hashlib.sha256(json.dumps(list(symbols), ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


@dataclasses.dataclass
class LmCard(Card):
    """An n-gram language model over a dataset's normalised text, in the ASR model's units.

    The units are a sub-word model's tokenizer pieces (``tokenizer``) or a character model's
    labels (``labels``); an LM decodes only a model of the same units (``units_digest``).

    Attributes:
        out_dir: the step's directory (the ARPA file, the .nemo n-gram, card.json).
        arpa: the ARPA file (tokens written as ``chr(id + token_offset)``).
        nemo: NeMo's ``.nemo`` n-gram of the same model: decoding's ``ngram_lm_model``.
        sources: the manifests read, in order.
        tokenizer: the SentencePiece model the text was cut with ("" for a character model's labels).
        vocab_size: the number of units (the ASR model's output ids without blank).
        token_offset: the offset of the token characters (NeMo's ``DEFAULT_TOKEN_OFFSET``).
        order: the n-gram order.
        smoothing: the estimation method.
        utterances: utterances the model was estimated on.
        tokens: their tokens (without ``<s>`` and ``</s>``).
        heldout_every: one utterance in this many, by a hash of its text, was held out (0: none).
        heldout_utterances: utterances held out.
        heldout_tokens: their tokens (without ``</s>``).
        heldout_perplexity: perplexity per token (``</s>`` counted) on the held-out
            utterances; None without any.
        ngrams: n-grams written per order (1-grams first).
        discounts: per order, the discounts of adjusted counts 1, 2 and 3+.
        discount_fallback: the orders whose discounts are lmplz's fallback (text too small).
        empty: utterances whose normalised text is empty, left out.
        rejected: manifest lines that could not be read.
        rejects_by_reason: those lines by reason.
        rejects: rejects.jsonl when any line was rejected, else None.
        labels: the character model's labels the text was spelled with, in id order (None
            for a tokenizer's pieces).
        labels_from: the .nemo or config YAML they were read from ("" for a tokenizer).
        units_digest: :func:`units_digest` of the pieces or labels ("" in cards written
            before it was recorded).
    """

    STEP: ClassVar[str] = settings.STEP
    arpa: str
    nemo: str
    sources: list[str]
    tokenizer: str
    vocab_size: int
    token_offset: int
    order: int
    smoothing: str
    utterances: int
    tokens: int
    heldout_every: int
    heldout_utterances: int
    heldout_tokens: int
    heldout_perplexity: float | None
    ngrams: list[int]
    discounts: list[list[float]]
    discount_fallback: list[int]
    empty: int
    rejected: int
    rejects_by_reason: dict[str, int]
    rejects: str | None
    labels: list[str] | None = None
    labels_from: str = ""
    units_digest: str = ""

    @property
    def units(self) -> str:
        """``labels`` or ``tokenizer``: what the LM's tokens are."""
        return LABELS if self.labels is not None else TOKENIZER

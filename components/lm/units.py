"""The units an LM is built over: a sub-word model's tokenizer pieces or a character model's labels.

NeMo's n-gram fusion (``NGramGPULanguageModel``, through CTC ``beam_batch`` and RNN-T
``malsd_batch``/``maes_batch``) scores the ASR model's output ids, blank excluded, whatever
they stand for: a sub-word model's ids are its tokenizer's pieces, a character model's its
``labels`` (NeMo puts the blank after them, and reads the LM with ``vocab_size`` = the
blank's id). An LM is built for one such vocabulary, in one order; :class:`Units` is that
vocabulary as train-lm cuts text into it, and the card records it (its digest, and a
character model's labels themselves) so that evaluate can refuse an LM of other units.
"""

from __future__ import annotations

import dataclasses
import io
import tarfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from components import nemo_archive, storage
from components.layout import NEMO_CONFIG_NAME
from components.lm import text
from components.lm.card import units_digest
from components.lm.errors import LmError
from components.lm.kneser_ney import Sentences
from components.lm.settings import LABELS, TOKENIZER
from components.progress import Progress

LABEL_SOURCES = (".nemo", ".yaml", ".yml")
"""What ``--labels-from`` reads: a character model, or its config."""


@dataclasses.dataclass(frozen=True)
class Units:
    """The vocabulary an LM is built over, id by id.

    Attributes:
        kind: ``tokenizer`` (SentencePiece pieces) or ``labels`` (a character model's labels).
        source: the tokenizer's ``.model`` file, or the ``.nemo`` / YAML the labels were read from.
        symbols: the pieces or labels in id order.
        processor: the SentencePiece processor (``tokenizer`` units only).
    """

    kind: str
    source: str
    symbols: tuple[str, ...]
    processor: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def vocab_size(self) -> int:
        return len(self.symbols)

    @property
    def digest(self) -> str:
        return units_digest(self.symbols)

    def describe(self) -> str:
        if self.kind == LABELS:
            return f"the {self.vocab_size} labels of {self.source}"
        return f"the tokenizer {self.source} ({self.vocab_size} pieces)"

    def missing(self, text: str) -> str:
        """The characters of ``text`` the labels lack, in order of first use ("" for none).

        A tokenizer lacks none: SentencePiece cuts any text (unknown pieces become ``<unk>``).
        """
        if self.kind != LABELS:
            return ""
        known = set(self.symbols)
        return "".join(dict.fromkeys(char for char in text if char not in known))

    def encode(self, texts: Sequence[str], what: str) -> Sentences:
        """The texts as ids: SentencePiece's pieces, or one label a character.

        Raises:
            LmError: a character the labels lack (drop such texts first, by :meth:`missing`).
        """
        if self.kind == TOKENIZER:
            return text.encode(self.processor, texts, what)
        return self._spell(texts, what)

    def _spell(self, texts: Sequence[str], what: str) -> Sentences:
        codes = np.array([ord(label) for label in self.symbols], dtype=np.int64)
        tokens: list[np.ndarray] = []
        lengths: list[np.ndarray] = []
        progress = Progress(f"train-lm {what} utterances spelled", total=len(texts))
        for start in range(0, len(texts), text.ENCODE_BATCH):
            batch = texts[start : start + text.ENCODE_BATCH]
            chars = np.frombuffer("".join(batch).encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
            table = np.full(max(int(codes.max()), int(chars.max(initial=0))) + 1, -1, dtype=np.int64)
            table[codes] = np.arange(len(codes))
            ids = table[chars]
            if (ids < 0).any():
                bad = chr(int(chars[np.argmax(ids < 0)]))
                raise LmError(f"train-lm: {bad!r} is not one of {self.describe()}")
            tokens.append(ids)
            lengths.append(np.fromiter((len(t) for t in batch), dtype=np.int64, count=len(batch)))
            progress.update(len(batch))
        progress.finish()
        if not tokens:
            return Sentences(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
        return Sentences(np.concatenate(tokens), np.concatenate(lengths))


def tokenizer_units(tokenizer: str) -> Units:
    """A train-tokenizer directory's (or a ``.model`` file's) pieces.

    Raises:
        LmError: no such file, or not a SentencePiece model; the message names the file.
    """
    uri = text.tokenizer_model_uri(tokenizer)
    processor = text.load_tokenizer(uri)
    pieces = tuple(processor.id_to_piece(i) for i in range(processor.get_piece_size()))
    return Units(kind=TOKENIZER, source=uri, symbols=pieces, processor=processor)


def label_units(source: str) -> Units:
    """A character model's labels, from its ``.nemo`` or its config YAML (local or gs://).

    A ``.nemo`` gives its ``labels`` (or ``decoder.vocabulary``); a YAML its ``model.labels``
    (a config as ``asrflow train`` takes it, written out in full) or top-level ``labels``.

    Raises:
        LmError: no such file, not a .nemo or YAML, a sub-word model, no labels in it, or a
            label that is not one character; the message names the file.
    """
    source = source.rstrip("/")
    if not source.endswith(LABEL_SOURCES):
        raise LmError(f"--labels-from {source}: give a character model's .nemo or its config (.yaml)")
    if storage.stat(source) is None:
        raise LmError(f"--labels-from {source}: no such file")
    if source.endswith(".nemo"):
        cfg = _nemo_config(source)
        labels = cfg.get("labels") or _select(cfg, "decoder.vocabulary")
        tokenizer = _select(cfg, "tokenizer")
    else:
        cfg = _yaml(source, storage.read_bytes(source))
        model = cfg.get("model") or {}
        labels = model.get("labels") or cfg.get("labels")
        tokenizer = model.get("tokenizer") or cfg.get("tokenizer")
    if not labels:
        if tokenizer:
            raise LmError(
                f"--labels-from {source}: a sub-word model (it has a tokenizer); build its LM with "
                "--tokenizer (the model's train-tokenizer directory)"
            )
        where = "labels or decoder.vocabulary" if source.endswith(".nemo") else "model.labels"
        based = " (its _base_ holds them: give that YAML, or the model's .nemo)" if "_base_" in cfg else ""
        raise LmError(f"--labels-from {source}: no {where} in it{based}")
    return Units(kind=LABELS, source=source, symbols=_check_labels(source, labels))


def _check_labels(source: str, labels: Any) -> tuple[str, ...]:
    if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
        raise LmError(f"--labels-from {source}: its labels are not a list of strings")
    for index, label in enumerate(labels):
        if len(label) != 1:
            raise LmError(f"--labels-from {source}: label {index} ({label!r}) is not one character")
    if len(set(labels)) != len(labels):
        raise LmError(f"--labels-from {source}: a label appears twice")
    return tuple(labels)


def _select(cfg: dict[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def _yaml(source: str, data: bytes) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.to_container(OmegaConf.create(data.decode("utf-8")), resolve=False)
    except Exception as err:  # OmegaConf's parse errors share no base class
        raise LmError(f"--labels-from {source}: not a YAML mapping ({type(err).__name__})") from None
    if not isinstance(cfg, dict):
        raise LmError(f"--labels-from {source}: not a YAML mapping")
    return cfg


def _nemo_config(source: str) -> dict[str, Any]:
    """The ``model_config.yaml`` of a ``.nemo`` archive (read from the archive, nothing restored)."""
    try:
        opened = (
            tarfile.open(fileobj=io.BytesIO(storage.read_bytes(source)), mode="r:*")
            if storage.is_gcs(source)
            else tarfile.open(source, "r:*")
        )
        with opened as tar:
            config = nemo_archive.read_config(tar)
    except tarfile.TarError:
        config = None
    if config is not None:
        return _yaml(source, config)
    raise LmError(f"--labels-from {source}: not a .nemo archive (no {NEMO_CONFIG_NAME} in it)")

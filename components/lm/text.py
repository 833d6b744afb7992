"""train-lm's input: the normalised text of manifests and tarred datasets, cut into tokens."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from components import layout, manifest, storage
from components.lm.errors import LmError
from components.lm.kneser_ney import Sentences
from components.manifest import ManifestError, Rejects, iter_manifest, normalize_text
from components.progress import Progress

TOKENIZER_MODEL_NAME = layout.TOKENIZER_MODEL_NAME
"""The SentencePiece model in a train-tokenizer output directory."""
NOT_IN_LABELS = "not_in_labels"
"""The reject reason of a text with a character a character model's labels lack."""
ENCODE_BATCH = 10_000
"""Texts handed to SentencePiece at once (it encodes a batch on several threads)."""


def manifest_uris(source: str) -> list[str]:
    """The manifests of one SOURCE: itself when it is a file, else a tarred dataset's.

    A tarred dataset directory gives its ``tarred_audio_manifest.json`` or, without one,
    its ``sharded_manifests/manifest_<i>.json`` in shard order.

    Raises:
        LmError: SOURCE is neither; the message names it.
    """
    source = source.rstrip("/")
    if storage.stat(source) is not None:
        return [source]
    if not storage.is_gcs(source) and not storage.exists(source):
        raise LmError(f"{source}: no such file or directory")
    sharded = manifest.tarred_manifest_uris(source)
    if not sharded:
        raise LmError(
            f"{source}: neither a manifest nor a tarred dataset (no {layout.TARRED_MANIFEST_NAME} "
            f"and no {layout.sharded_manifest_name(0)})"
        )
    return sharded


def read_texts(
    uris: Sequence[str], rejects: Rejects, missing: Callable[[str], str] | None = None
) -> tuple[list[str], int]:
    """The normalised texts of the manifests in order, and how many were empty (left out).

    Lines that are not valid manifest lines go to ``rejects``; so do texts with units the LM
    cannot spell: ``missing(text)`` names them (a character model's labels lack them).
    """
    texts: list[str] = []
    empty = 0
    progress = Progress("train-lm manifest lines")
    for uri in uris:
        for line_number, entry in iter_manifest(uri):
            progress.update()
            if isinstance(entry, ManifestError):
                rejects.add(f"{uri}:{line_number}", uri, "bad_manifest_line", str(entry))
                continue
            text = normalize_text(entry["text"])
            lacking = missing(text) if missing is not None and text else ""
            if lacking:
                detail = f"{text!r}: {', '.join(map(repr, lacking))} not among the labels"
                rejects.add(f"{uri}:{line_number}", uri, NOT_IN_LABELS, detail)
            elif text:
                texts.append(text)
            else:
                empty += 1
    progress.finish()
    return texts, empty


def is_heldout(text: str, every: int) -> bool:
    """True for about one text in ``every`` (never for ``every == 0``), the same on every run.

    The choice hangs on the text alone, so repeated sentences all fall on one side.
    """
    if every <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % every == 0


def split_heldout(texts: Sequence[str], every: int) -> tuple[list[str], list[str]]:
    """(training texts, held-out texts), each in the order given."""
    training: list[str] = []
    heldout: list[str] = []
    for text in texts:
        (heldout if is_heldout(text, every) else training).append(text)
    return training, heldout


def tokenizer_model_uri(tokenizer: str) -> str:
    """``DIR/tokenizer.model`` for a train-tokenizer directory; a ``.model`` file as it is."""
    tokenizer = tokenizer.rstrip("/")
    if tokenizer.endswith(".model"):
        return tokenizer
    return storage.join(tokenizer, TOKENIZER_MODEL_NAME)


def load_tokenizer(uri: str) -> Any:
    """The SentencePiece model at ``uri`` (local or gs://).

    Raises:
        LmError: no such file, or not a SentencePiece model; the message names the file.
    """
    import sentencepiece

    if not storage.exists(uri):
        raise LmError(f"{uri}: no such file (--tokenizer takes the output directory of train-tokenizer)")
    processor = sentencepiece.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(storage.read_bytes(uri))
    except (RuntimeError, OSError):
        raise LmError(f"{uri}: not a SentencePiece model (it does not parse)") from None
    if processor.get_piece_size() <= 0:
        raise LmError(f"{uri}: a SentencePiece model without pieces")
    return processor


def encode(processor: Any, texts: Sequence[str], what: str) -> Sentences:
    """The texts as token ids, as NeMo's SentencePieceTokenizer.text_to_ids cuts them."""
    tokens: list[np.ndarray] = []
    lengths: list[np.ndarray] = []
    progress = Progress(f"train-lm {what} utterances tokenized", total=len(texts))
    for start in range(0, len(texts), ENCODE_BATCH):
        batch = processor.encode(list(texts[start : start + ENCODE_BATCH]), out_type=int)
        lengths.append(np.fromiter((len(ids) for ids in batch), dtype=np.int64, count=len(batch)))
        tokens.append(np.fromiter(itertools.chain.from_iterable(batch), dtype=np.int64))
        progress.update(len(batch))
    progress.finish()
    if not tokens:
        return Sentences(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return Sentences(np.concatenate(tokens), np.concatenate(lengths))

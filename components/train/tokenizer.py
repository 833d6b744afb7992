"""``asrflow train-tokenizer``: a SentencePiece tokenizer on a dataset's normalised text."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from components import cards, layout, manifest, storage
from components.train.card import TokenizerCard, echo
from components.train.errors import TrainError

log = logging.getLogger("asrflow.train")

TOKENIZER_FILES = (layout.TOKENIZER_MODEL_NAME, "tokenizer.vocab", "vocab.txt")
"""What NeMo's ``create_spt_model`` writes, and a BPE config's ``model.tokenizer.dir`` holds."""


def training_texts(source: str) -> tuple[str, list[str]]:
    """The manifest a tokenizer learns from, and its texts after the shared normalisation."""
    uri = source
    if not source.endswith((".json", ".jsonl")):
        uri = storage.join(source, layout.TARRED_MANIFEST_NAME)
        if not storage.exists(uri):
            raise TrainError(
                f"{source}: neither a manifest nor a tarred directory with {layout.TARRED_MANIFEST_NAME}"
            )
    texts = []
    try:
        for entry in manifest.read_manifest(uri):
            text = manifest.normalize_text(entry["text"])
            if text:
                texts.append(text)
    except manifest.ManifestError as err:
        raise TrainError(str(err)) from None
    except FileNotFoundError:
        raise TrainError(f"manifest not found: {uri}") from None
    if not texts:
        raise TrainError(f"{uri}: no text to learn a tokenizer from")
    return uri, texts


def train_tokenizer(
    source: str, out: str, vocab_size: int = 256, model_type: str = "bpe", seed: int = 0
) -> dict[str, Any]:
    """Train a SentencePiece tokenizer (NeMo's ``create_spt_model``) on the normalised texts.

    Args:
        source: a tarred directory (its tarred_audio_manifest.json) or a NeMo manifest.
        out: output directory (local or gs://): tokenizer.model, vocab.txt, card.json, _SUCCESS.
        vocab_size: SentencePiece vocabulary size (a soft limit for small corpora).
        model_type: "bpe" or "unigram".
        seed: SentencePiece's random seed (same text and seed: the same tokenizer bytes).

    Returns:
        The card (:class:`~components.train.card.TokenizerCard`) as a dict.
    """
    if storage.is_complete(out):
        log.info("%s is complete: nothing to do", out)
        return echo(cards.read_card(out))
    manifest_uri, texts = training_texts(source)
    return _train(manifest_uri, texts, out, vocab_size, model_type, seed)


def _train(
    manifest_uri: str, texts: list[str], out: str, vocab_size: int, model_type: str, seed: int
) -> dict[str, Any]:
    """Train on ``texts`` (read from ``manifest_uri``) into ``out``; the card as a dict."""
    import sentencepiece
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    target = out if storage.is_gcs(out) else str(Path(out).resolve())  # the body below changes directory
    with tempfile.TemporaryDirectory(prefix="asrflow-tokenizer-") as tmp, contextlib.chdir(tmp):
        # Relative paths: SentencePiece stores its input and output paths in the model file.
        Path("text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        sentencepiece.set_random_generator_seed(seed)  # it shuffles the input: same seed, same model
        create_spt_model(
            "text.txt",
            vocab_size=vocab_size,
            sample_size=-1,
            do_lower_case=False,
            tokenizer_type=model_type,
            output_dir="tokenizer",
            remove_extra_whitespaces=True,
        )
        built = Path(tmp, "tokenizer")
        vocab = Path(built, "vocab.txt").read_text(encoding="utf-8").splitlines()
        for name in TOKENIZER_FILES:
            storage.upload_file(built / name, storage.join(target, name), overwrite=True)
    card = TokenizerCard(
        out_dir=out,
        tokenizer_model=storage.join(out, layout.TOKENIZER_MODEL_NAME),
        type=model_type,
        vocab_size=len(vocab) + 1,  # vocab.txt leaves out <unk>
        requested_vocab_size=vocab_size,
        sentences=len(texts),
        characters=sum(len(t) for t in texts),
        source=manifest_uri,
        seed=seed,
    )
    card.write()
    storage.mark_complete(out)
    return card.to_dict()


def tokenizer_key(texts: list[str], vocab_size: int, model_type: str, seed: int) -> str:
    """A digest of the normalised texts and the settings: the same text and settings, the same key."""
    digest = hashlib.sha256(json.dumps([vocab_size, model_type, seed]).encode())
    for text in texts:
        digest.update(text.encode("utf-8") + b"\n")
    return digest.hexdigest()[:16]


def tokenizer_for_config(
    source: str, data_root: str, config: str, vocab_size: int = 256, model_type: str = "bpe", seed: int = 0
) -> tuple[str, dict[str, Any]]:
    """The tokenizer a run of ``config`` needs, trained once per text under ``DATA_ROOT/tokenizers``.

    The pipeline's step: a sub-word config gets a tokenizer of the training text in
    ``DATA_ROOT/tokenizers/<key>`` (:func:`tokenizer_key`: a rerun on the same text finds it
    complete and trains nothing); a character config, or ``vocab_size`` 0 (a fine-tuned
    sub-word model keeps its own tokenizer), gets none.

    Returns:
        The tokenizer directory ("" for none), and the card (or why there is none) as a dict.
    """
    from components.train.config import is_bpe, load_config

    if not is_bpe(load_config(config)):
        return "", {"step": "train-tokenizer", "tokenizer": None, "reason": f"{config} is a character model"}
    if vocab_size == 0:
        reason = "vocab size 0: a fine-tuned model keeps its own tokenizer"
        return "", {"step": "train-tokenizer", "tokenizer": None, "reason": reason}
    manifest_uri, texts = training_texts(source)
    out = layout.tokenizer_dir(data_root, tokenizer_key(texts, vocab_size, model_type, seed))
    if storage.is_complete(out):
        log.info("%s is complete (same text and settings): nothing to do", out)
        return out, echo(cards.read_card(out))
    return out, _train(manifest_uri, texts, out, vocab_size, model_type, seed)

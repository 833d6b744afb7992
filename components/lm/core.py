"""train-lm: an n-gram language model over a dataset's text, for NeMo's n-gram fusion.

Reads the texts of NeMo manifests or tarred datasets (their manifests only, never the
audio), applies the shared normalisation, cuts them into the ASR model's units
(:mod:`components.lm.units`: a sub-word model's tokenizer pieces, or a character model's
labels, one a character), holds out about one utterance in ``heldout_every`` (by a hash of
its text), and estimates an interpolated modified Kneser-Ney model
(:mod:`components.lm.kneser_ney`) over those units on the rest. Writes, under the output
directory (local or gs://):

- ``lm.arpa``: the model as a token-level ARPA file (:mod:`components.lm.arpa`);
- ``lm.nemo``: the same model as NeMo's ``NGramGPULanguageModel``, which loads fastest;
  either is what NeMo's decoding takes as ``ngram_lm_model`` (CTC ``beam_batch``, RNN-T
  ``malsd_batch``/``maes_batch``), with ``ngram_lm_alpha`` as its weight;
- ``card.json`` with the counts and the held-out perplexity, and ``_SUCCESS`` last.

The same text, units and settings give byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from components import layout, outputs, storage
from components.layout import REJECTS_NAME, SUCCESS_MARKER
from components.lm import arpa, kneser_ney, text
from components.lm.card import LmCard
from components.lm.errors import LmError
from components.lm.settings import (
    ARPA_NAME,
    DEFAULT_HELDOUT_EVERY,
    LABELS,
    NEMO_NAME,
    STEP,
    TOKENIZER,
    default_order,
)
from components.lm.units import Units, label_units, tokenizer_units
from components.manifest import DEFAULT_MAX_REJECT_FRACTION, Rejects

log = logging.getLogger("asrflow.train_lm")


def lm_key(sources: Sequence[str], units: str, order: int, heldout_every: int) -> str:
    """The pipeline's name for an LM: a digest of what it is made from.

    ``units`` is the tokenizer directory, or ``labels:<digest>`` of a character model's
    labels. The DAG's sources (tarred dataset directories) and tokenizer directory are
    themselves keyed by their content, so equal names mean equal models.
    """
    what = json.dumps([list(sources), units, order, heldout_every])
    return hashlib.sha256(what.encode()).hexdigest()[:16]


def lm_for_pipeline(
    sources: Sequence[str],
    tokenizer: str,
    data_root: str,
    order: int,
    heldout_every: int = DEFAULT_HELDOUT_EVERY,
    labels_from: str = "",
) -> tuple[str, dict[str, Any]]:
    """The pipeline's LM step: ``DATA_ROOT/lms/<key>/lm.nemo``, trained once per text, units and settings.

    The units are the tokenizer's (a sub-word model) or, without one, the labels of
    ``labels_from`` (a character model's .nemo or config YAML). No LM ("" and why) for
    ``order`` 0 (the pipeline's default) or with neither.

    Returns:
        The lm.nemo URI ("" for none), and the card (or why there is none) as a dict.
    """
    if order == 0:
        return "", {"step": STEP, "lm": None, "reason": "lm_order 0: no language model"}
    if not tokenizer and not labels_from:
        return "", {
            "step": STEP,
            "lm": None,
            "reason": "no tokenizer and no labels: a character model decodes without an LM",
        }
    units = tokenizer or f"{LABELS}:{label_units(labels_from).digest}"
    out_dir = layout.lm_dir(data_root, lm_key(sources, units, order, heldout_every))
    if storage.is_complete(out_dir):
        log.info("%s is complete (same text, units and settings): nothing to do", out_dir)
        card = LmCard.read(out_dir)
    else:
        card = train_lm(
            sources, tokenizer, out_dir, order=order, heldout_every=heldout_every, labels_from=labels_from
        )
    return card.nemo, card.to_dict()


def check_settings(
    sources: Sequence[str], order: int, heldout_every: int, tokenizer: str = "x", labels_from: str = ""
) -> None:
    """Raise :class:`LmError` for settings no model can come from."""
    if bool(tokenizer) == bool(labels_from):
        raise LmError(
            f"{STEP}: give the ASR model's units: --tokenizer (a sub-word model's tokenizer) or "
            "--labels-from (a character model's .nemo or config), one of them"
        )
    if not sources:
        raise LmError(f"{STEP}: give at least one SOURCE (a manifest or a tarred dataset directory)")
    if order < 2:
        raise LmError(f"{STEP}: --order must be at least 2 (NeMo reads no 1-gram model), got {order}")
    if heldout_every < 0 or heldout_every == 1:
        raise LmError(f"{STEP}: --heldout-every must be 0 (none held out) or at least 2, got {heldout_every}")


def train_lm(
    sources: Sequence[str],
    tokenizer: str,
    out_dir: str,
    order: int | None = None,
    heldout_every: int = DEFAULT_HELDOUT_EVERY,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    labels_from: str = "",
) -> LmCard:
    """Estimate the model and write ``lm.arpa``, ``lm.nemo``, ``card.json`` and ``_SUCCESS``.

    Args:
        sources: NeMo manifests and tarred dataset directories (local or gs://), read in order.
        tokenizer: a train-tokenizer output directory (its ``tokenizer.model``) or a ``.model``
            file, for a sub-word model; "" with ``labels_from``.
        out_dir: the output directory (local or gs://); an earlier train-lm output is replaced.
        order: the n-gram order (at least 2); None: :func:`settings.default_order` of the units.
        heldout_every: hold out about one utterance in this many for the perplexity; 0: none.
        max_reject_fraction: fail when more manifest lines than this are unreadable (or, for
            labels, hold a character the labels lack).
        labels_from: a character model's .nemo or config YAML, whose labels are the units.

    Returns:
        The card (also written as ``card.json``).

    Raises:
        LmError: a source, the units or a setting is unusable; the message names it.
    """
    order = default_order(LABELS if labels_from else TOKENIZER) if order is None else order
    check_settings(sources, order, heldout_every, tokenizer, labels_from)
    out_dir = out_dir.rstrip("/")
    manifests = [uri for source in sources for uri in text.manifest_uris(source)]
    units = label_units(labels_from) if labels_from else tokenizer_units(tokenizer)
    with outputs.locked(outputs.lock_uri(out_dir), STEP):
        outputs.claim_output(out_dir, STEP)
        storage.delete(storage.join(out_dir, SUCCESS_MARKER))  # a rerun: not complete until done again
        card = _train(manifests, units, out_dir, order, heldout_every, max_reject_fraction)
        card.write(echo=False)
        storage.mark_complete(out_dir)
    return card


def _train(
    manifests: list[str],
    units: Units,
    out_dir: str,
    order: int,
    heldout_every: int,
    max_reject_fraction: float,
) -> LmCard:
    rejects = Rejects()
    texts, empty = text.read_texts(manifests, rejects, units.missing)
    rejects.check(len(texts) + empty, max_reject_fraction, STEP)
    training, heldout = text.split_heldout(texts, heldout_every)
    if not training:
        raise LmError(f"{STEP}: no text to learn from in {', '.join(manifests)}")
    vocab_size = units.vocab_size
    if vocab_size > arpa.MAX_VOCAB_SIZE:
        limit = arpa.MAX_VOCAB_SIZE
        raise LmError(f"{units.source}: {vocab_size} tokens; NeMo's n-gram files hold at most {limit}")
    training_ids = units.encode(training, "training")
    heldout_ids = units.encode(heldout, "held-out")
    log.info(
        "%s: estimating a %d-gram over %d utterances (%d tokens) in %s",
        STEP,
        order,
        len(training_ids),
        training_ids.num_tokens,
        units.describe(),
    )
    try:
        model = kneser_ney.estimate(training_ids, vocab_size, order)
    except ValueError as err:
        raise LmError(f"{STEP}: {err}") from None
    fallback = [n for n, discounts in enumerate(model.discounts, start=1) if discounts.fallback]
    if fallback:
        log.warning(
            "%s: too little text to estimate the discounts of order(s) %s; using lmplz's fallback %s",
            STEP,
            ", ".join(map(str, fallback)),
            kneser_ney.FALLBACK_DISCOUNTS,
        )
    perplexity = model.perplexity(heldout_ids) if len(heldout_ids) else None
    arpa_uri, nemo_uri = write_model(model, out_dir)
    rejects_uri = None
    if len(rejects):
        rejects_uri = storage.join(out_dir, REJECTS_NAME)
        rejects.write(rejects_uri)
    return LmCard(
        out_dir=out_dir,
        arpa=arpa_uri,
        nemo=nemo_uri,
        sources=manifests,
        tokenizer=units.source if units.kind != LABELS else "",
        vocab_size=vocab_size,
        token_offset=arpa.TOKEN_OFFSET,
        order=order,
        smoothing=kneser_ney.SMOOTHING,
        utterances=len(training_ids),
        tokens=training_ids.num_tokens,
        heldout_every=heldout_every,
        heldout_utterances=len(heldout_ids),
        heldout_tokens=heldout_ids.num_tokens,
        heldout_perplexity=round(perplexity, 4) if perplexity is not None else None,
        ngrams=model.ngram_counts(),
        discounts=[[round(value, 6) for value in discounts.as_list()] for discounts in model.discounts],
        discount_fallback=fallback,
        empty=empty,
        rejected=len(rejects),
        rejects_by_reason=rejects.counts(),
        rejects=rejects_uri,
        labels=list(units.symbols) if units.kind == LABELS else None,
        labels_from=units.source if units.kind == LABELS else "",
        units_digest=units.digest,
    )


def write_model(model: kneser_ney.NgramModel, out_dir: str) -> tuple[str, str]:
    """Write ``lm.arpa`` and ``lm.nemo`` into ``out_dir``; their URIs.

    Both are made in a local temporary directory (NeMo reads and writes local files), then
    copied into place atomically.
    """
    with tempfile.TemporaryDirectory(prefix="asrflow-lm-") as tmp:
        local_arpa = Path(tmp, ARPA_NAME)
        log.info("%s: writing %s (%s n-grams)", STEP, ARPA_NAME, " / ".join(map(str, model.ngram_counts())))
        with open(local_arpa, "wb") as out:
            arpa.write_arpa(model, out)
        local_nemo = Path(tmp, NEMO_NAME)
        log.info("%s: converting it to NeMo's n-gram model, %s", STEP, NEMO_NAME)
        arpa.write_nemo(local_arpa, model.vocab_size, local_nemo)
        uris = []
        for local in (local_arpa, local_nemo):
            uri = storage.join(out_dir, local.name)
            storage.upload_file(local, uri, overwrite=True)
            uris.append(uri)
    return uris[0], uris[1]


def summary_lines(card: LmCard) -> Iterator[str]:
    """What a person reads first: the model's size and its held-out perplexity."""
    built_for = (
        f"the {card.vocab_size} labels of {card.labels_from}"
        if card.units == LABELS
        else f"the tokenizer {card.tokenizer} ({card.vocab_size} pieces)"
    )
    yield (
        f"{card.order}-gram ({card.smoothing}) over {card.utterances:,} utterances, "
        f"{card.tokens:,} tokens, in {built_for}"
    )
    yield "n-grams per order: " + " / ".join(f"{count:,}" for count in card.ngrams)
    if card.heldout_perplexity is None:
        yield "held-out perplexity: none (no utterance held out)"
    else:
        yield (
            f"held-out perplexity: {card.heldout_perplexity:.2f} per token on {card.heldout_utterances:,} "
            f"utterances ({card.heldout_tokens:,} tokens)"
        )
    if card.rejected:
        reasons = ", ".join(f"{reason}: {count:,}" for reason, count in card.rejects_by_reason.items())
        yield f"rejected: {card.rejected:,} manifest lines ({reasons}); see {card.rejects}"
    if card.discount_fallback:
        orders = ", ".join(map(str, card.discount_fallback))
        yield f"fallback discounts (too little text) for order(s): {orders}"
    yield f"arpa: {card.arpa}"
    yield f"nemo: {card.nemo}"

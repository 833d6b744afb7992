"""The n-gram LM and the key phrases a beam search can take, checked against the model.

The LM is what ``asrflow train-lm`` writes: a directory with ``lm.nemo``, ``lm.arpa`` and
``card.json``, or one of those files beside its card. Its symbols are the model's output ids:
a sub-word model's tokenizer pieces or a character model's labels, so an LM of other units
would score nonsense without any error from NeMo. It is used only when its card's units are
the model's, the same pieces or labels in the same order (by the card's digest of them, or by
the tokenizer file it names; a card older than the digest whose tokenizer file cannot be read
any more is taken at the same size, with a warning).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import cards, layout, storage
from components.evaluate.decoding import Decoding, LanguageModel, ModelInfo
from components.evaluate.errors import EvaluateError
from components.evaluate.model import ModelRunner
from components.evaluate.results import SetResult, evaluate_set
from components.evaluate.sets import EvalSet, Utterance
from components.lm.card import units_digest
from components.manifest import normalize_text

log = logging.getLogger("asrflow.evaluate")

DEFAULT_LM_ALPHA = 0.5
DEFAULT_ALPHA_GRID = (0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""The LM weights tried on the validation set with ``--tune-lm-alpha``."""
LM_FILES = (layout.LM_NEMO_NAME, layout.LM_ARPA_NAME)
"""What an LM directory offers, in the order used (``lm.nemo`` loads fastest)."""


def _lm_file_and_card(uri: str) -> tuple[str, str]:
    """The LM file to decode with and the card.json URI that describes it."""
    uri = uri.rstrip("/")
    if storage.stat(uri) is not None:  # a file
        return uri, cards.card_uri(storage.parent(uri))
    for name in LM_FILES:
        candidate = storage.join(uri, name)
        if storage.stat(candidate) is not None:
            return candidate, cards.card_uri(uri)
    raise EvaluateError(
        f"--lm {uri}: no such LM; give the output directory of `asrflow train-lm` "
        f"(with {' or '.join(LM_FILES)}) or one of those files"
    )


def resolve_lm(uri: str, staging_dir: str) -> LanguageModel:
    """The LM at ``uri`` (a train-lm directory or its lm.nemo / lm.arpa), fetched to this machine.

    Raises:
        EvaluateError: no LM there, or no train-lm card beside it (nothing tells which
            tokenizer it was built for).
    """
    from components.lm.card import LmCard

    path, card_uri = _lm_file_and_card(uri)
    if storage.stat(card_uri) is None:
        raise EvaluateError(
            f"--lm {uri}: no {layout.CARD_NAME} beside {storage.basename(path)}, so nothing says which "
            "tokenizer it was built for; give the output directory of `asrflow train-lm`"
        )
    try:
        card = LmCard.read(card_uri)
    except (cards.CardError, ValueError) as err:
        raise EvaluateError(f"--lm {uri}: {err}") from None
    local = path
    if storage.is_gcs(path):
        digest = hashlib.sha1(path.encode()).hexdigest()[:16]
        local = str(Path(staging_dir, "lm", digest, storage.basename(path)))
        storage.download_file(path, local)
    return LanguageModel(
        uri=path,
        local_path=local,
        md5=storage.file_md5(local),
        vocab_size=card.vocab_size,
        tokenizer=card.tokenizer,
        labels=tuple(card.labels) if card.labels is not None else None,
        labels_from=card.labels_from,
        units_digest=card.units_digest,
    )


def _tokenizer_pieces(uri: str) -> tuple[str, ...] | None:
    """The pieces of the SentencePiece model at ``uri``; None when it cannot be read."""
    import sentencepiece

    if storage.stat(uri) is None:
        return None
    processor = sentencepiece.SentencePieceProcessor(model_proto=storage.read_bytes(uri))
    return tuple(processor.id_to_piece(i) for i in range(processor.get_piece_size()))


def _built_for(lm: LanguageModel) -> str:
    if lm.labels is not None:
        return f"--lm {lm.uri} was built for the {lm.vocab_size} labels of {lm.labels_from}"
    return f"--lm {lm.uri} was built for the tokenizer {lm.tokenizer} ({lm.vocab_size} tokens)"


def check_lm_fits(lm: LanguageModel, info: ModelInfo, model_uri: str) -> None:
    """Raise unless the LM was built for the model's units: its tokenizer's pieces or its labels.

    Raises:
        EvaluateError: units of the other kind (an LM of a tokenizer for a character model or
            the other way round), another number of units, or other units of the same number;
            the message names the LM, what it was built for, the model and the first difference.
    """
    built_for = _built_for(lm)
    if info.tokenizer_pieces is None:
        if lm.labels is None:
            raise EvaluateError(
                f"{built_for}, but {model_uri} is a character model ({info.vocab_size} labels, no "
                "tokenizer); build its LM from its labels (asrflow train-lm --labels-from MODEL.nemo)"
            )
        _check_same_units(built_for, lm.labels, info.labels or (), "labels", model_uri, "--labels-from")
        return
    pieces = info.tokenizer_pieces
    if lm.labels is not None:
        raise EvaluateError(
            f"{built_for}, but {model_uri} is a sub-word model (a tokenizer of {len(pieces)} tokens); "
            "build its LM with its tokenizer (asrflow train-lm --tokenizer)"
        )
    if lm.vocab_size != len(pieces):
        raise EvaluateError(
            f"{built_for}, but {model_uri} has a tokenizer of {len(pieces)} tokens; "
            "build the LM with the model's tokenizer (asrflow train-lm --tokenizer)"
        )
    lm_pieces = _tokenizer_pieces(lm.tokenizer)
    if lm_pieces is None:
        if lm.units_digest:
            if lm.units_digest != units_digest(pieces):
                raise EvaluateError(
                    f"{built_for}, but {model_uri} has another tokenizer of the same size (their "
                    "digests differ); build the LM with the model's tokenizer (asrflow train-lm --tokenizer)"
                )
            return
        log.warning(
            "evaluate: cannot read %s to compare it with the model's tokenizer; "
            "the LM is used because its vocabulary size (%d) is the model's",
            lm.tokenizer,
            lm.vocab_size,
        )
        return
    _check_same_units(built_for, lm_pieces, pieces, "tokenizer", model_uri, "--tokenizer")


def _check_same_units(
    built_for: str,
    lm_units: Sequence[str],
    model_units: Sequence[str],
    kind: str,
    model_uri: str,
    option: str,
) -> None:
    """Raise unless the LM's units are the model's, in the same order; name the first difference."""
    if tuple(lm_units) == tuple(model_units):
        return
    fix = f"build the LM for the model (asrflow train-lm {option})"
    if len(lm_units) != len(model_units):
        raise EvaluateError(f"{built_for}, but {model_uri} has {len(model_units)} {kind}; {fix}")
    first = next(i for i, (a, b) in enumerate(zip(lm_units, model_units, strict=True)) if a != b)
    what = "another tokenizer of the same size" if kind == "tokenizer" else "other labels, as many"
    raise EvaluateError(
        f"{built_for}, but {model_uri} has {what} (token {first} is {lm_units[first]!r} in the "
        f"LM's, {model_units[first]!r} in the model's); {fix}"
    )


def read_boost_phrases(uri: str, info: ModelInfo) -> tuple[str, ...]:
    """The key phrases of ``uri``: one a line, normalised as transcripts are; blank lines skipped.

    Raises:
        EvaluateError: no such file, no phrase in it, a line with nothing left after
            normalisation (file and line named), or a character model (NeMo's boosting tree
            needs a tokenizer).
    """
    if storage.stat(uri) is None:
        raise EvaluateError(f"--boost {uri}: no such file")
    if info.tokenizer_pieces is None:
        raise EvaluateError(
            f"--boost {uri}: key-phrase boosting needs a sub-word (BPE) model, not a character one"
        )
    try:
        text = storage.read_text(uri)
    except UnicodeDecodeError:
        raise EvaluateError(f"--boost {uri}: not UTF-8 text (one phrase a line)") from None
    phrases: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        phrase = normalize_text(line)
        if not phrase:
            raise EvaluateError(
                f"{uri}:{number}: {line.strip()!r} has no letters or digits left after normalisation"
            )
        phrases.append(phrase)
    if not phrases:
        raise EvaluateError(f"--boost {uri}: no key phrase in it (one phrase a line)")
    return tuple(dict.fromkeys(phrases))


def parse_alpha_grid(text: str) -> tuple[float, ...]:
    """``"0.1,0.3,0.5"`` -> the alphas; each at least 0.

    Raises:
        EvaluateError: not a comma-separated list of numbers at least 0.
    """
    try:
        alphas = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise EvaluateError(
            f"--lm-alpha-grid {text!r}: give comma-separated numbers, e.g. 0.1,0.3,0.5"
        ) from None
    if not alphas or any(alpha < 0 for alpha in alphas):
        raise EvaluateError(f"--lm-alpha-grid {text!r}: give one or more numbers, each at least 0")
    return tuple(sorted(set(alphas)))


def tune_alpha(
    runner: ModelRunner,
    decoding: Decoding,
    validation: tuple[EvalSet, Sequence[Utterance]],
    out_dir: str,
    worst: int,
    grid: Sequence[float],
) -> tuple[Decoding, SetResult, dict[str, Any]]:
    """Pick the LM weight on the validation set alone: each alpha of ``grid``, lowest WER wins.

    Ties go to the lower CER, then the smaller alpha. Each alpha's hypotheses go under
    ``out_dir/<set>/<decoding key>_tuning/alpha-<alpha>``.

    Returns:
        The decoding with the chosen alpha, its result on the validation set, and the
        tuning's record for the card (the set, each alpha's WER and CER, the choice).
    """
    eval_set, utterances = validation
    tuning_dir = storage.join(out_dir, eval_set.name, f"{decoding.key}_tuning")
    tried: list[tuple[float, SetResult]] = []
    for index, alpha in enumerate(grid, start=1):
        label = f"evaluate tune {decoding.key} alpha {index}/{len(grid)} ({alpha:g}) on {eval_set.name}"
        candidate = decoding.with_alpha(alpha)
        set_dir = storage.join(tuning_dir, f"alpha-{alpha:g}")
        tried.append((alpha, evaluate_set(runner, eval_set, utterances, set_dir, worst, label, candidate)))
    alpha, best = min(tried, key=lambda item: (item[1].score.wer, item[1].score.cer, item[0]))
    log.info(
        "evaluate: %s: LM weight %g chosen on %s (WER %.2f%%; tried %s)",
        decoding.key,
        alpha,
        eval_set.name,
        100 * best.score.wer,
        ", ".join(f"{a:g}: {100 * r.score.wer:.2f}%" for a, r in tried),
    )
    record = {
        "set": eval_set.name,
        "grid": [{"alpha": a, "wer": r.score.wer, "cer": r.score.cer} for a, r in tried],
        "alpha": alpha,
    }
    return decoding.with_alpha(alpha), best, record

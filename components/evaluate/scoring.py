"""WER and CER as the evaluate step counts them: normalised text, jiwer over a whole set.

References and hypotheses both go through :func:`components.manifest.normalize_text` (the
normalisation training uses), then jiwer counts hits, substitutions, insertions and
deletions over the whole set (corpus WER = (S + D + I) / (H + S + D); CER likewise over
characters, spaces included).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from components.manifest import normalize_text

SCORING = "normalize_text+jiwer-v1"
"""Names the scoring method; a recorded champion WER is reused only when it was scored the same way."""


@dataclasses.dataclass(frozen=True)
class SetScore:
    """Corpus-level counts for one set (words and characters) and the error rates."""

    wer: float
    cer: float
    substitutions: int
    insertions: int
    deletions: int
    hits: int
    char_substitutions: int
    char_insertions: int
    char_deletions: int
    char_hits: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score(references: Sequence[str], hypotheses: Sequence[str]) -> SetScore:
    """WER and CER of a whole set, after :func:`normalize_text` on both sides, by jiwer."""
    import jiwer

    refs = [normalize_text(text) for text in references]
    hyps = [normalize_text(text) for text in hypotheses]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return SetScore(
        wer=float(words.wer),
        cer=float(chars.cer),
        substitutions=words.substitutions,
        insertions=words.insertions,
        deletions=words.deletions,
        hits=words.hits,
        char_substitutions=chars.substitutions,
        char_insertions=chars.insertions,
        char_deletions=chars.deletions,
        char_hits=chars.hits,
    )


def utterance_rates(reference: str, hypothesis: str) -> tuple[float, float, int]:
    """(WER, CER, word errors) of one utterance, normalised as :func:`score` does.

    An empty reference gives jiwer's figure: the number of inserted words (or characters).
    """
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    errors = words.substitutions + words.insertions + words.deletions
    return float(words.wer), float(chars.cer), errors


def percent(rate: float) -> str:
    """An error rate as people read it: ``0.1234`` -> ``12.34%``."""
    return f"{100 * rate:.2f}%"

"""The evaluate step's card."""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from components.cards import Card


@dataclasses.dataclass
class EvaluateCard(Card):
    """What one evaluation found: WER and CER per set, and the champion decision.

    Attributes:
        out_dir: the evaluation's directory (hypotheses per set, report.md, card.json).
        model: the .nemo model evaluated (an absolute local path or gs:// URI).
        model_md5: the .nemo file's MD5.
        device: what transcribed (``cpu``, ``cuda``, ``cuda:N``).
        scoring: the scoring method (:data:`components.evaluate.scoring.SCORING`).
        sets: per set: manifest, source, fingerprint, num_utterances, hours, the WER and CER
            counts, and the hypotheses' URI.
        mean_wer: the unweighted mean of the sets' WERs.
        report: report.md's URI.
        champion: the champion decision (None without a champion URI).
    """

    STEP: ClassVar[str] = "evaluate"
    model: str
    model_md5: str
    device: str
    scoring: str
    sets: dict[str, dict[str, Any]]
    mean_wer: float
    report: str
    champion: dict[str, Any] | None

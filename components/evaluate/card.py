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
        sets: per set: manifest, source, fingerprint, num_utterances, hours, the served
            decoding's WER and CER counts and hypotheses' URI, and ``decodings``: the same
            figures under every decoding key.
        mean_wer: the unweighted mean of the sets' WERs, served decoding (what the champion
            comparison reads).
        report: report.md's URI.
        champion: the champion decision (None without a champion URI).
        heads: the model's decoding heads (``ctc``, ``rnnt``; a hybrid has both), served first.
        served: the served decoding: ``head`` (the one NeMo decodes with once the model is
            restored), ``strategy`` and its ``decoding`` key.
        decodings: every decoding scored, by key (``rnnt_greedy``, ``ctc_beam_lm``...): head,
            strategy, beam size, LM and its weight, key phrases.
        mean_wer_by_decoding: the mean WER over the sets under each decoding.
        lm: the n-gram LM (None without one): file, MD5, the tokenizer it was built for, the
            beam, the weight per decoding and the tuning on the validation set.
        boost: the key phrases boosted (None without them): file, phrases, weight.
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
    heads: list[str] = dataclasses.field(default_factory=list)
    served: dict[str, Any] = dataclasses.field(default_factory=dict)
    decodings: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    mean_wer_by_decoding: dict[str, float] = dataclasses.field(default_factory=dict)
    lm: dict[str, Any] | None = None
    boost: dict[str, Any] | None = None

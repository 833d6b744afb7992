"""One model over the eval sets: hypotheses per set (reused when already made), scored.

Each set's hypotheses go to ``<set>/hypotheses.jsonl`` (one line per utterance: audio,
duration, reference, hypothesis, per-utterance WER and CER), then ``<set>/_SUCCESS`` holding
the model and set fingerprints they belong to: a rerun with the same model on the same set
reuses them instead of transcribing again.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

from components import layout, storage
from components.evaluate.decoding import Decoding
from components.evaluate.model import ModelRunner, transcribe
from components.evaluate.scoring import SCORING, SetScore, score, utterance_rates
from components.evaluate.sets import EvalSet, Utterance, set_fingerprint
from components.manifest import manifest_line
from components.progress import Progress

log = logging.getLogger("asrflow.evaluate")

HYPOTHESES_NAME = "hypotheses.jsonl"


@dataclasses.dataclass
class SetResult:
    """A set's score under one decoding and where its hypotheses are.

    ``audio_s_per_s`` is the transcription speed (seconds of audio per second, model loading
    and decoder set-up left out), None when the hypotheses were reused.
    """

    eval_set: EvalSet
    fingerprint: str
    num_utterances: int
    hours: float
    score: SetScore
    hypotheses_uri: str
    worst: list[dict[str, Any]]
    decoding: Decoding
    audio_s_per_s: float | None = None

    def card(self) -> dict[str, Any]:
        """The set's entry in the evaluate card's ``sets``."""
        return {
            "manifest": self.eval_set.manifest,
            "source": self.eval_set.source,
            "fingerprint": self.fingerprint,
            "num_utterances": self.num_utterances,
            "hours": round(self.hours, 6),
            **self.score.as_dict(),
            "hypotheses": self.hypotheses_uri,
        }

    def figures(self) -> dict[str, Any]:
        """The set's entry under one decoding: the scores and the hypotheses.

        The speed is left out (the report shows it): a rerun that reuses the hypotheses
        writes the same card.
        """
        return {**self.score.as_dict(), "hypotheses": self.hypotheses_uri}


def mean_wer(results: Mapping[str, SetResult]) -> float:
    """The unweighted mean of per-set WERs (each set counts the same, whatever its size)."""
    return math.fsum(result.score.wer for result in results.values()) / len(results)


def _set_done_text(model_md5: str, fingerprint: str, decoding: Decoding) -> str:
    return json.dumps(
        {
            "model_md5": model_md5,
            "fingerprint": fingerprint,
            "scoring": SCORING,
            "decoding": decoding.describe(),
        },
        sort_keys=True,
    )


def _read_predictions(uri: str, expected: int) -> list[str] | None:
    if storage.stat(uri) is None:
        return None
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    if len(rows) != expected or not all(isinstance(row.get("pred_text"), str) for row in rows):
        return None
    return [row["pred_text"] for row in rows]


def _transcribe_set(
    runner: ModelRunner, utterances: Sequence[Utterance], label: str, decoding: Decoding
) -> tuple[list[str], float]:
    """Transcribe a set with the runner's model, showing utterances and audio seconds a second.

    Returns the transcripts and the speed (audio seconds per second).
    """
    model = runner.model(decoding)
    progress = Progress(f"{label}: utterances", total=len(utterances))
    seconds = {"audio": 0.0}
    started = time.monotonic()

    def on_chunk(chunk: Sequence[Utterance]) -> None:
        seconds["audio"] += sum(utt.duration for utt in chunk)
        speed = seconds["audio"] / max(time.monotonic() - started, 1e-9)
        progress.update(len(chunk), audio_s_per_s=f"{speed:.1f}")

    with tempfile.TemporaryDirectory(prefix="transcribe-", dir=runner.staging_dir) as work:
        predictions = transcribe(model, utterances, runner.batch_size, runner.num_workers, work, on_chunk)
    progress.finish()
    return predictions, seconds["audio"] / max(time.monotonic() - started, 1e-9)


def _rows(utterances: Sequence[Utterance], predictions: Sequence[str]) -> list[tuple[dict[str, Any], int]]:
    """hypotheses.jsonl's rows, each with its number of word errors."""
    rows = []
    for utt, prediction in zip(utterances, predictions, strict=True):
        wer, cer, errors = utterance_rates(utt.text, prediction)
        row: dict[str, Any] = {"audio_filepath": utt.audio_uri, "duration": utt.duration}
        if utt.offset:
            row["offset"] = utt.offset
        row.update(text=utt.text, pred_text=prediction, wer=wer, cer=cer, line=utt.line)
        rows.append((row, errors))
    return rows


def evaluate_set(
    runner: ModelRunner,
    eval_set: EvalSet,
    utterances: Sequence[Utterance],
    set_dir: str,
    worst: int,
    label: str,
    decoding: Decoding,
) -> SetResult:
    """Transcribe one set (or reuse its finished hypotheses), score it, write hypotheses.jsonl."""
    fingerprint = set_fingerprint(utterances)
    hypotheses_uri = storage.join(set_dir, HYPOTHESES_NAME)
    done_uri = storage.join(set_dir, layout.SUCCESS_MARKER)
    done_text = _set_done_text(runner.md5, fingerprint, decoding)
    speed = None
    hours = sum(utt.duration for utt in utterances) / 3600
    predictions: list[str] | None = None
    if storage.exists(done_uri) and storage.read_text(done_uri) == done_text:
        predictions = _read_predictions(hypotheses_uri, len(utterances))
        if predictions is not None:
            log.info(
                "%s: hypotheses already made by this model on this set, reusing %s", label, hypotheses_uri
            )
    if predictions is None:
        storage.delete(done_uri)
        predictions, speed = _transcribe_set(runner, utterances, label, decoding)
    rows = _rows(utterances, predictions)
    if not storage.exists(done_uri):
        storage.write_text(hypotheses_uri, "".join(manifest_line(row) for row, _ in rows))
        storage.write_text(done_uri, done_text)
    set_score = score([utt.text for utt in utterances], predictions)
    worst_rows = sorted(rows, key=lambda item: (-item[0]["wer"], -item[1], item[0]["line"]))[:worst]
    log.info(
        "%s: %d utterances, %.2f h: WER %.2f%% CER %.2f%% (S %d, I %d, D %d)",
        label,
        len(utterances),
        hours,
        100 * set_score.wer,
        100 * set_score.cer,
        set_score.substitutions,
        set_score.insertions,
        set_score.deletions,
    )
    return SetResult(
        eval_set=eval_set,
        fingerprint=fingerprint,
        num_utterances=len(utterances),
        hours=hours,
        score=set_score,
        hypotheses_uri=hypotheses_uri,
        worst=[row for row, _ in worst_rows],
        decoding=decoding,
        audio_s_per_s=speed,
    )


def evaluate_model(
    runner: ModelRunner,
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    worst: int,
    who: str = "model",
    decoding: Decoding | None = None,
) -> dict[str, SetResult]:
    """Every set in turn, decoded by ``decoding`` (default: the model's served decoding).

    The served decoding's outputs go under ``out_dir/<set>``, another's under
    ``out_dir/<set>/<decoding key>``. Returns the results by set name.
    """
    served = runner.served_decoding()
    decoding = decoding or served
    results = {}
    for index, (eval_set, utterances) in enumerate(sets, start=1):
        label = f"evaluate {who} set {index}/{len(sets)} {eval_set.name}"
        set_dir = storage.join(out_dir, eval_set.name)
        if decoding != served:
            label += f" {decoding.key}"
            set_dir = storage.join(set_dir, decoding.key)
        results[eval_set.name] = evaluate_set(runner, eval_set, utterances, set_dir, worst, label, decoding)
    return results

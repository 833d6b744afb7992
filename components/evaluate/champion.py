"""The champion: the model in service, ``models/<name>/champion.json``, and who replaces it.

The model chosen to serve is the one with the lowest mean of the per-set WERs (each set
weighs the same); see :func:`decide_promotion`. The champion's recorded WERs are reused only
when they were measured on exactly these sets and scored alike; otherwise the champion model
is re-evaluated here, under ``champion/<set>``. champion.json is written only on promotion.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

from components import cards, layout, storage
from components.evaluate.errors import EvaluateError
from components.evaluate.model import ModelRunner
from components.evaluate.results import SetResult, evaluate_model, mean_wer
from components.evaluate.scoring import SCORING, percent
from components.evaluate.sets import CHAMPION_DIR, EvalSet, Utterance

log = logging.getLogger("asrflow.evaluate")

DEFAULT_MAX_WER = 0.9
"""The promotion ceiling: above it a model is not fit for service."""


def champion_file(uri: str) -> str:
    """A champion.json URI, or the directory that holds one."""
    return uri if uri.endswith(".json") else storage.join(uri, layout.CHAMPION_NAME)


def read_champion(uri: str) -> dict[str, Any] | None:
    """The champion record at ``uri``, or None when there is none yet.

    Raises:
        EvaluateError: a record that is not JSON or lacks ``model`` / ``sets``.
    """
    if storage.stat(uri) is None:
        return None
    try:
        record = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as err:
        raise EvaluateError(f"{uri}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), str):
        raise EvaluateError(f"{uri}: a champion record needs a string field 'model'")
    if not isinstance(record.get("sets"), dict):
        raise EvaluateError(f"{uri}: a champion record needs an object field 'sets' (WER per set)")
    for name, entry in record["sets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("wer"), (int, float)):
            raise EvaluateError(f"{uri}: sets.{name}.wer must be a number")
    return record


def recorded_results_usable(champion: Mapping[str, Any], results: Mapping[str, SetResult]) -> bool:
    """True when the champion's recorded WERs were measured on exactly these sets, scored alike."""
    if champion.get("scoring") != SCORING:
        return False
    recorded = champion["sets"]
    return all(
        name in recorded and recorded[name].get("fingerprint") == result.fingerprint
        for name, result in results.items()
    )


def decide_promotion(new_mean: float, champion_mean: float, min_improvement: float = 0.0) -> tuple[bool, str]:
    """Promote when the new mean WER is lower by more than ``min_improvement`` (absolute).

    A tie (or a gain not above ``min_improvement``) keeps the champion: the model in service
    changes only for a measured gain.
    """
    new, old = percent(new_mean), percent(champion_mean)
    if new_mean < champion_mean - min_improvement:
        return True, f"mean WER {new} is lower than the champion's {old}"
    if new_mean == champion_mean:
        return False, f"mean WER {new} ties the champion's; a tie keeps the champion"
    if new_mean < champion_mean:
        return False, (
            f"mean WER {new} beats the champion's {old} by less "
            f"than --min-improvement {100 * min_improvement:.2f} points"
        )
    return False, f"mean WER {new} is not lower than the champion's {old}"


def champion_record(
    model_uri: str, model_md5: str, results: Mapping[str, SetResult], out_dir: str
) -> dict[str, Any]:
    """What champion.json holds: the model, its WER per set (with set fingerprints), and where from."""
    return {
        "model": model_uri,
        "model_md5": model_md5,
        "mean_wer": mean_wer(results),
        "scoring": SCORING,
        "decoding": next(iter(results.values())).decoding.describe(),
        "evaluation": cards.card_uri(out_dir),
        "sets": {
            name: {
                "wer": result.score.wer,
                "cer": result.score.cer,
                "num_utterances": result.num_utterances,
                "hours": round(result.hours, 6),
                "fingerprint": result.fingerprint,
            }
            for name, result in results.items()
        },
    }


def _champion_wers(
    champion: Mapping[str, Any],
    runner: ModelRunner,
    results: Mapping[str, SetResult],
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    worst: int,
    reevaluate: bool,
) -> tuple[dict[str, float], dict[str, SetResult] | None, str]:
    """The champion's WER per set: recorded, or measured again under ``out_dir/champion``.

    Returns the WERs, the re-evaluated results (None when recorded) and which it was.
    """
    if not reevaluate and recorded_results_usable(champion, results):
        log.info(
            "evaluate: champion %s was measured on these same sets; using its recorded WER",
            champion["model"],
        )
        return {name: float(champion["sets"][name]["wer"]) for name in results}, None, "recorded"
    why = "asked to" if reevaluate else "its recorded WER is not from these same sets"
    log.info("evaluate: re-evaluating champion %s on these sets (%s)", champion["model"], why)
    champion_runner = ModelRunner(
        champion["model"], runner.staging_dir, runner.device, runner.batch_size, runner.num_workers
    )
    try:
        champion_results = evaluate_model(
            champion_runner, sets, storage.join(out_dir, CHAMPION_DIR), worst, who="champion"
        )
    finally:
        champion_runner.close()
    return {name: r.score.wer for name, r in champion_results.items()}, champion_results, "re-evaluated"


def run_champion(
    champion_uri: str,
    model_uri: str,
    runner: ModelRunner,
    results: dict[str, SetResult],
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    *,
    worst: int,
    min_improvement: float,
    reevaluate: bool,
    max_wer: float = DEFAULT_MAX_WER,
) -> tuple[dict[str, Any], dict[str, SetResult] | None]:
    """Compare with the champion at ``champion_uri``; write a new champion.json if better.

    Returns the card's ``champion`` section and the champion's re-evaluated results (None
    when its recorded figures were used or there was no champion).
    """
    new_mean = mean_wer(results)
    section: dict[str, Any] = {
        "uri": champion_uri,
        "mean_wer": new_mean,
        "min_improvement": min_improvement,
        "max_wer": max_wer,
    }
    champion = read_champion(champion_uri)
    champion_results: dict[str, SetResult] | None = None
    if champion is not None:
        section["previous_model"] = champion["model"]
    if new_mean > max_wer:
        # Checked first: a model this bad is never put in service, champion or not.
        promoted, source = False, "not-compared"
        reason = f"mean WER {percent(new_mean)} is above the promotion ceiling {percent(max_wer)} (--max-wer)"
    elif champion is None:
        promoted, reason, source = True, "there was no champion yet", "none"
    elif champion.get("model_md5") == runner.md5:
        promoted, reason, source = False, "this model is the champion already (same .nemo MD5)", "same-model"
    else:
        champion_wers, champion_results, source = _champion_wers(
            champion, runner, results, sets, out_dir, worst, reevaluate
        )
        champion_mean = math.fsum(champion_wers.values()) / len(champion_wers)
        section["previous_mean_wer"] = champion_mean
        section["previous_sets"] = {name: {"wer": wer} for name, wer in champion_wers.items()}
        for name, r in (champion_results or {}).items():
            section["previous_sets"][name]["cer"] = r.score.cer
        promoted, reason = decide_promotion(new_mean, champion_mean, min_improvement)
    section.update(promoted=promoted, reason=reason, champion_source=source)
    if promoted:
        record = champion_record(model_uri, runner.md5, results, out_dir)
        storage.write_text(champion_uri, json.dumps(record, sort_keys=True, indent=2) + "\n")
        log.info("evaluate: %s is the new champion: %s; wrote %s", model_uri, reason, champion_uri)
    else:
        log.info("evaluate: champion kept: %s; %s untouched", reason, champion_uri)
    return section, champion_results

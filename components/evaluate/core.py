"""The evaluate step: a NeMo ASR model on eval sets; transcripts, WER/CER, a report, the champion.

The eval sets are read by :mod:`~components.evaluate.sets`, transcribed by
:mod:`~components.evaluate.model`, scored by :mod:`~components.evaluate.scoring` into
:mod:`~components.evaluate.results`, compared with the model in service by
:mod:`~components.evaluate.champion` and written up by :mod:`~components.evaluate.report`.

Output layout under ``out_dir``::

    <set>/hypotheses.jsonl   one line per utterance: audio_filepath, duration, text, pred_text, wer, cer
    <set>/_SUCCESS           the model and set fingerprints these hypotheses belong to (resume)
    <set>/input/             a dataset input exported to FLAC + manifest.json (parquet or card inputs)
    champion/<set>/...       the champion re-evaluated on the same sets (with --champion)
    report.md                the table of sets and the worst utterances of each
    card.json, _SUCCESS      written last
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import storage
from components.evaluate.card import EvaluateCard
from components.evaluate.champion import DEFAULT_MAX_WER, champion_file, run_champion
from components.evaluate.errors import EvaluateError
from components.evaluate.model import ModelRunner, check_nemo_archive, pick_device
from components.evaluate.report import REPORT_NAME, render_report
from components.evaluate.results import evaluate_model, mean_wer
from components.evaluate.scoring import SCORING
from components.evaluate.sets import load_utterances, resolve_eval_sets
from components.progress import format_seconds

log = logging.getLogger("asrflow.evaluate")

__all__ = ["DEFAULT_MAX_WER", "EvaluateError", "evaluate"]


def _model_key(model_uri: str) -> str:
    """The model as the card and champion.json name it: a gs:// URI or an absolute path.

    A local model that is not a .nemo archive is named here, before any audio is read.
    """
    if storage.is_gcs(model_uri):
        return model_uri
    if not Path(model_uri).is_file():
        raise EvaluateError(f"no such model: {model_uri}")
    check_nemo_archive(model_uri)
    return str(Path(model_uri).resolve())


def evaluate(
    model_uri: str,
    eval_sets: Sequence[str],
    out_dir: str,
    champion_uri: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    num_workers: int | None = None,
    worst: int = 10,
    min_improvement: float = 0.0,
    reevaluate_champion: bool = False,
    max_wer: float = DEFAULT_MAX_WER,
    echo: bool = True,
) -> dict[str, Any]:
    """Evaluate a .nemo model on eval sets; write hypotheses, report.md and card.json.

    Args:
        model_uri: the .nemo file, local or gs://.
        eval_sets: ``PATH`` or ``NAME=PATH`` each: a NeMo manifest, parquet directory or
            download card.
        out_dir: where the outputs go (local or gs://).
        champion_uri: a champion.json (e.g. ``DATA_ROOT/models/<name>/champion.json``): when
            given, the model is compared with the champion and replaces it only when better.
        batch_size: utterances per forward pass.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda[:N]``.
        num_workers: dataloader workers (default: 0 on CPU, 4 on GPU).
        worst: how many worst utterances the report lists per set.
        min_improvement: absolute mean-WER gain a new model needs to be promoted (0.01 = 1 point).
        reevaluate_champion: re-evaluate the champion even when its recorded WER is from the same sets.
        max_wer: a model whose mean WER is above this is never promoted, even with no champion.
        echo: print the card as the last stdout line.

    Returns:
        The card (:class:`EvaluateCard`, as written to ``out_dir/card.json``).
    """
    if batch_size < 1:
        raise EvaluateError(f"--batch-size must be at least 1, got {batch_size}")
    device = pick_device(device)
    if num_workers is None:
        num_workers = 0 if device == "cpu" else 4
    started = time.monotonic()
    model_key = _model_key(model_uri)
    with tempfile.TemporaryDirectory(prefix="asrflow-evaluate-") as staging:
        specs = resolve_eval_sets(eval_sets, out_dir)
        sets = [(eval_set, load_utterances(eval_set, staging)) for eval_set in specs]
        runner = ModelRunner(model_key, staging, device, batch_size, num_workers)
        results = evaluate_model(runner, sets, out_dir, worst)
        runner.close()
        champion_section = champion_results = None
        if champion_uri:
            champion_section, champion_results = run_champion(
                champion_file(champion_uri),
                model_key,
                runner,
                results,
                sets,
                out_dir,
                worst=worst,
                min_improvement=min_improvement,
                reevaluate=reevaluate_champion,
                max_wer=max_wer,
            )
        report_uri = storage.join(out_dir, REPORT_NAME)
        storage.write_text(report_uri, render_report(model_key, results, champion_section, champion_results))
        card = EvaluateCard(
            out_dir=out_dir,
            model=model_key,
            model_md5=runner.md5,
            device=device,
            scoring=SCORING,
            sets={name: result.card() for name, result in results.items()},
            mean_wer=mean_wer(results),
            report=report_uri,
            champion=champion_section,
        )
    log.info(
        "evaluate: %d set(s), %.2f h of audio in %s; mean WER %.2f%%",
        len(results),
        sum(r.hours for r in results.values()),
        format_seconds(time.monotonic() - started),
        100 * card.mean_wer,
    )
    card.write(echo=echo)
    storage.mark_complete(out_dir)
    return card.to_dict()

"""The evaluate step: a NeMo ASR model on eval sets; transcripts, WER/CER, a report, the champion.

The eval sets are read by :mod:`~components.evaluate.sets`, transcribed by
:mod:`~components.evaluate.model`, scored by :mod:`~components.evaluate.scoring` into
:mod:`~components.evaluate.results`, compared with the model in service by
:mod:`~components.evaluate.champion` and written up by :mod:`~components.evaluate.report`.

Output layout under ``out_dir``::

    <set>/hypotheses.jsonl   the served decoding (the served head, greedy), one line per utterance:
                             audio_filepath, duration, text, pred_text, wer, cer
    <set>/_SUCCESS           the model, set fingerprint and decoding these hypotheses belong to (resume)
    <set>/<decoding>/...     every other decoding: the other head of a hybrid, beam search, beam
                             search with the LM (keys like ``ctc_greedy``, ``rnnt_beam_lm``)
    <val>/<decoding>_tuning/alpha-<a>/...   --tune-lm-alpha: each LM weight on the validation set
    <set>/input/             a dataset input exported to FLAC + manifest.json (parquet or card inputs)
    champion/<set>/...       the champion re-evaluated on the same sets (with --champion)
    report.md                the table of sets and the worst utterances of each
    card.json, _SUCCESS      written last
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import storage
from components.evaluate import lm as lm_module
from components.evaluate.card import EvaluateCard
from components.evaluate.champion import DEFAULT_MAX_WER, champion_file, run_champion
from components.evaluate.decoding import DEFAULT_BEAM_SIZE, DEFAULT_BOOST_ALPHA, Decoding, LanguageModel
from components.evaluate.errors import EvaluateError
from components.evaluate.lm import DEFAULT_ALPHA_GRID, DEFAULT_LM_ALPHA
from components.evaluate.model import ModelRunner, check_nemo_archive, pick_device
from components.evaluate.report import REPORT_NAME, render_report
from components.evaluate.results import SetResult, evaluate_model, mean_wer
from components.evaluate.scoring import SCORING
from components.evaluate.sets import EvalSet, Utterance, load_utterances, resolve_eval_sets
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


@dataclasses.dataclass(frozen=True)
class DecodingOptions:
    """What to decode with beside the served decoding (the CLI's and component's LM options).

    Attributes:
        lm: a train-lm output directory, or its lm.nemo / lm.arpa (None: no LM).
        lm_alpha: the LM weight (``ngram_lm_alpha``) unless tuned.
        beam_size: the beam; 0 means the default beam when an LM or key phrases need one,
            and no beam search otherwise.
        tune_lm_alpha: pick the LM weight from ``lm_alpha_grid`` on ``validation_set``.
        lm_alpha_grid: the LM weights tried.
        validation_set: the set the LM weight is tuned on (default: the first set).
        boost: a file of key phrases (one a line) boosted in the beam search.
        boost_alpha: the boosting weight.
    """

    lm: str | None = None
    lm_alpha: float = DEFAULT_LM_ALPHA
    beam_size: int = 0
    tune_lm_alpha: bool = False
    lm_alpha_grid: tuple[float, ...] = DEFAULT_ALPHA_GRID
    validation_set: str | None = None
    boost: str | None = None
    boost_alpha: float = DEFAULT_BOOST_ALPHA

    def check(self, set_names: Sequence[str]) -> None:
        """Raise :class:`EvaluateError` for options no decoding can come from."""
        if self.beam_size < 0:
            raise EvaluateError(f"--beam must be at least 1, got {self.beam_size}")
        if self.lm_alpha < 0:
            raise EvaluateError(f"--lm-alpha must be at least 0, got {self.lm_alpha}")
        if self.tune_lm_alpha and not self.lm:
            raise EvaluateError("--tune-lm-alpha needs an LM: give --lm")
        if self.tune_lm_alpha and not self.lm_alpha_grid:
            raise EvaluateError("--tune-lm-alpha needs at least one alpha in --lm-alpha-grid")
        if self.validation_set and self.validation_set not in set_names:
            raise EvaluateError(
                f"--validation-set {self.validation_set!r} is not one of the sets: {', '.join(set_names)}"
            )

    @property
    def beam(self) -> int:
        """The beam searches' beam (0: no beam search)."""
        if self.beam_size:
            return self.beam_size
        return DEFAULT_BEAM_SIZE if self.lm or self.boost else 0


def plan_decodings(
    heads: Sequence[str], options: DecodingOptions, lm: LanguageModel | None, phrases: tuple[str, ...]
) -> list[Decoding]:
    """Every decoding to score, the served one (the first head, greedy) first.

    Per head: greedy; with a beam, beam search (with the key phrases); with an LM, beam search
    with the LM (and the key phrases).
    """
    decodings = [Decoding(head=head) for head in heads]
    if options.beam:
        beam = {"beam_size": options.beam, "boost": phrases, "boost_alpha": options.boost_alpha}
        decodings += [Decoding(head=head, **beam) for head in heads]
        if lm is not None:
            decodings += [Decoding(head=head, lm=lm, lm_alpha=options.lm_alpha, **beam) for head in heads]
    return decodings


def _evaluate_decodings(
    runner: ModelRunner,
    decodings: Sequence[Decoding],
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    worst: int,
    options: DecodingOptions,
) -> tuple[dict[str, dict[str, SetResult]], dict[str, Decoding], dict[str, Any]]:
    """Each decoding over the sets, the LM weight tuned first where asked.

    Returns the results by decoding key then set, the decodings as used (tuned alpha), and
    the tuning records by decoding key.
    """
    results: dict[str, dict[str, SetResult]] = {}
    used: dict[str, Decoding] = {}
    tuning: dict[str, Any] = {}
    validation_name = options.validation_set or sets[0][0].name
    for decoding in decodings:
        if decoding.lm is not None and options.tune_lm_alpha:
            validation = next(item for item in sets if item[0].name == validation_name)
            decoding, best, tuning[decoding.key] = lm_module.tune_alpha(
                runner, decoding, validation, out_dir, worst, options.lm_alpha_grid
            )
            rest = [item for item in sets if item[0].name != validation_name]
            others = evaluate_model(runner, rest, out_dir, worst, decoding=decoding) if rest else {}
            found = {**others, validation_name: best}
            results[decoding.key] = {eval_set.name: found[eval_set.name] for eval_set, _ in sets}
        else:
            results[decoding.key] = evaluate_model(runner, sets, out_dir, worst, decoding=decoding)
        used[decoding.key] = decoding
    return results, used, tuning


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
    decoding: DecodingOptions | None = None,
) -> dict[str, Any]:
    """Evaluate a .nemo model on eval sets; write hypotheses, report.md and card.json.

    Every head of the model is scored (a hybrid's RNN-T and CTC heads), greedy; with an LM,
    a beam or key phrases, beam search too, with and without the LM. The main figures (the
    card's per-set ``wer``, ``mean_wer``, the champion comparison) are the served decoding's:
    the head NeMo decodes with once the model is restored, greedy.

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
        decoding: the LM, beam and key phrases (default: none, greedy only).

    Returns:
        The card (:class:`EvaluateCard`, as written to ``out_dir/card.json``).
    """
    options = decoding or DecodingOptions()
    if batch_size < 1:
        raise EvaluateError(f"--batch-size must be at least 1, got {batch_size}")
    device = pick_device(device)
    if num_workers is None:
        num_workers = 0 if device == "cpu" else 4
    started = time.monotonic()
    model_key = _model_key(model_uri)
    with tempfile.TemporaryDirectory(prefix="asrflow-evaluate-") as staging:
        specs = resolve_eval_sets(eval_sets, out_dir)
        options.check([spec.name for spec in specs])
        runner = ModelRunner(model_key, staging, device, batch_size, num_workers)
        info = runner.info
        lm = lm_module.resolve_lm(options.lm, staging) if options.lm else None
        if lm is not None:
            lm_module.check_lm_fits(lm, info, model_key)
        phrases = lm_module.read_boost_phrases(options.boost, info) if options.boost else ()
        sets = [(eval_set, load_utterances(eval_set, staging)) for eval_set in specs]
        planned = plan_decodings(info.heads, options, lm, phrases)
        by_decoding, used, tuning = _evaluate_decodings(runner, planned, sets, out_dir, worst, options)
        runner.close()
        served = planned[0]
        results = by_decoding[served.key]
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
        lm_section = _lm_section(lm, options, used, tuning)
        boost_section = None
        if phrases:
            boost_section = {"file": options.boost, "phrases": list(phrases), "alpha": options.boost_alpha}
        report_uri = storage.join(out_dir, REPORT_NAME)
        storage.write_text(
            report_uri,
            render_report(
                model_key,
                results,
                champion_section,
                champion_results,
                by_decoding=by_decoding,
                decodings=used,
                lm=lm_section,
                boost=boost_section,
            ),
        )
        sets_section = {}
        for name, result in results.items():
            sets_section[name] = result.card()
            figures = {key: by_set[name].figures() for key, by_set in by_decoding.items()}
            sets_section[name]["decodings"] = figures
        card = EvaluateCard(
            out_dir=out_dir,
            model=model_key,
            model_md5=runner.md5,
            device=device,
            scoring=SCORING,
            sets=sets_section,
            mean_wer=mean_wer(results),
            report=report_uri,
            champion=champion_section,
            heads=list(info.heads),
            served={"head": served.head, "strategy": served.strategy, "decoding": served.key},
            decodings={key: decoding.describe() for key, decoding in used.items()},
            mean_wer_by_decoding={key: mean_wer(found) for key, found in by_decoding.items()},
            lm=lm_section,
            boost=boost_section,
        )
    log.info(
        "evaluate: %d set(s), %.2f h of audio in %s; mean WER %.2f%% (%s)",
        len(results),
        sum(r.hours for r in results.values()),
        format_seconds(time.monotonic() - started),
        100 * card.mean_wer,
        served.key,
    )
    card.write(echo=echo)
    storage.mark_complete(out_dir)
    return card.to_dict()


def _lm_section(
    lm: LanguageModel | None, options: DecodingOptions, used: dict[str, Decoding], tuning: dict[str, Any]
) -> dict[str, Any] | None:
    """The card's ``lm``: which LM, for which units, the weight used per decoding, the tuning."""
    if lm is None:
        return None
    return {
        "uri": lm.uri,
        "md5": lm.md5,
        "vocab_size": lm.vocab_size,
        "tokenizer": lm.tokenizer,
        "labels_from": lm.labels_from,
        "beam_size": options.beam,
        "alpha": {key: d.lm_alpha for key, d in used.items() if d.lm is not None},
        "tuned": options.tune_lm_alpha,
        "tuning": tuning or None,
    }

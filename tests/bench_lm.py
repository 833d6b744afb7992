"""``make bench-lm``: WER and decoding speed of the shipped CTC model with and without an n-gram LM.

The model is the shipped pretrained ``small`` character Conformer-CTC
(tests/data/pretrained/small_espeak, ``make pretrained``); the corpus is the one it was
trained on, made by the same recipe (``tests.pretrained``: about an hour of espeak-ng speech in
the "espeak-unheard" voices, corpus seed 7, 60 validation and 60 test sentences). The LM is
``asrflow train-lm`` over the train split's text, in the model's labels (``--labels-from``
the model). ``asrflow evaluate`` then decodes the validation and test sets greedily, by beam
search without the LM and with it (``--tune-lm-alpha``: the LM weight is chosen on the
validation set alone), and the bench prints WER/CER on the 60 test sentences and the decoding
speed of each (audio seconds per second: the model's forward pass plus the search, on this
machine's CPU), the relative WER reduction against the aim (at least 15% with the LM), and the
LM's held-out perplexity. Several ``--order`` and ``--beam`` values try each combination.

The corpus's sentences come from the generator's small grammar (no test sentence is in the
training text, but its words and patterns are): the LM's gain here is larger than on real
speech. Figures, never asserts. About 10 min on two CPU cores for one order and beam;
``--workdir`` keeps the corpus (a directory that already holds it, e.g. the one
``python -m tests.pretrained --workdir DIR`` used, is read as it is, never rewritten) and
the bench's own outputs go to ``WORKDIR/lm-bench``.

    python -m tests.bench_lm [--workdir DIR] [--order N ...] [--beam N ...] [--alpha-grid A,B,...]
"""

from __future__ import annotations

import argparse
import logging
import re
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.progress import format_seconds, setup_logging
from pipelines.local_run import PRETRAINED_MODEL
from tests.bench_finetune import relative_reduction
from tests.pretrained import CONFIG, CORPUS_SEED, VOICES

log = logging.getLogger("asrflow.bench_lm")

HOURS = 1.0
AIM_RELATIVE_REDUCTION = 0.15
ALPHA_GRID = (0.3, 0.5, 0.7, 1.0, 1.5, 2.0)
"""Character LMs want more weight than sub-word ones: each label is scored, not each piece."""
VALIDATION, TEST = "validation", "test"
DECODINGS = ("ctc_greedy", "ctc_beam", "ctc_beam_lm")


def corpus(workdir: Path) -> tuple[Path, Path, Path]:
    """The tarred train split, validation and test manifests of the pretrained model's recipe.

    A workdir that holds them complete is read as it is (nothing rewritten); else
    ``tests.bench_quality.make_data`` makes them there, as ``tests.pretrained`` does.
    """
    from components import storage

    tarred, validation, test = workdir / "tarred", workdir / VALIDATION, workdir / TEST
    if all(storage.is_complete(str(path)) for path in (tarred, validation, test)):
        return tarred, validation / "manifest.json", test / "manifest.json"
    from components.train.config import load_config
    from tests.bench_quality import make_data

    train_ds = load_config(CONFIG).model.train_ds
    return make_data(workdir, HOURS, train_ds, voices=VOICES, seed=CORPUS_SEED)


def build_lm(tarred: Path, out: Path, order: int) -> Any:
    """train-lm over the train split's text in the model's labels (reused when complete)."""
    from components import storage
    from components.lm.card import LmCard
    from components.lm.core import train_lm

    if storage.is_complete(str(out)):
        card = LmCard.read(str(out))
        if card.order == order and card.labels_from == str(PRETRAINED_MODEL):
            return card
    return train_lm([str(tarred)], "", str(out), order=order, labels_from=str(PRETRAINED_MODEL))


def evaluate(lm: Path, validation: Path, test: Path, out: Path, beam: int, grid: tuple[float, ...]) -> dict:
    """``asrflow evaluate`` with the LM, its weight tuned on the validation set alone."""
    from components.evaluate.core import DecodingOptions
    from components.evaluate.core import evaluate as evaluate_model

    shutil.rmtree(out, ignore_errors=True)  # fresh: a reused set would report no speed
    options = DecodingOptions(
        lm=str(lm), beam_size=beam, tune_lm_alpha=True, lm_alpha_grid=grid, validation_set=VALIDATION
    )
    sets = [f"{VALIDATION}={validation}", f"{TEST}={test}"]
    return evaluate_model(str(PRETRAINED_MODEL), sets, str(out), device="cpu", echo=False, decoding=options)


def speeds(report: Path, set_name: str) -> dict[str, float]:
    """Audio seconds per second of each decoding of ``set_name``, from evaluate's report.md."""
    found: dict[str, float] = {}
    row = re.compile(rf"^\|\s*{set_name}\s*\|\s*(\w+)(?: \(served\))?\s*\|.*\|\s*([\d.]+)\s*\|$")
    for line in report.read_text().splitlines():
        if match := row.match(line):
            found[match.group(1)] = float(match.group(2))
    missing = [key for key in DECODINGS if key not in found]
    if missing:
        raise SystemExit(f"{report}: no audio-s/s for {', '.join(missing)} on {set_name}")
    return found


def show(lm_card: Any, card: dict, speed: dict[str, float], beam: int) -> dict[str, Any]:
    """Print one order and beam's figures; return them for the summary."""
    test = card["sets"][TEST]["decodings"]
    tuning = card["lm"]["tuning"]["ctc_beam_lm"]
    alpha = tuning["alpha"]
    tried = ", ".join(f"{item['alpha']:g}: {item['wer']:.1%}" for item in tuning["grid"])
    print(
        f"  LM: {lm_card.order}-gram of the model's {lm_card.vocab_size} labels over {lm_card.utterances:,} "
        f"train utterances ({lm_card.tokens:,} characters); held-out perplexity "
        f"{lm_card.heldout_perplexity:.3f} per character on {lm_card.heldout_utterances} held-out "
        "train utterances"
    )
    print(f"  beam {beam}: LM weight tuned on {tuning['set']} only: WER {tried}; chosen {alpha:g}")
    minutes = card["sets"][TEST]["hours"] * 60
    print(f"  {card['sets'][TEST]['num_utterances']} test utterances ({minutes:.1f} min of audio):")
    labels = {
        "ctc_greedy": "greedy (served)",
        "ctc_beam": f"beam {beam}, no LM",
        "ctc_beam_lm": f"beam {beam} + LM (alpha {alpha:g})",
    }
    print(f"    {'decoding':<28} {'WER':>6} {'CER':>6} {'audio-s/s':>10}")
    for key in DECODINGS:
        print(f"    {labels[key]:<28} {test[key]['wer']:>6.1%} {test[key]['cer']:>6.1%} {speed[key]:>10.1f}")
    without = min(test["ctc_greedy"]["wer"], test["ctc_beam"]["wer"])
    reduction = relative_reduction(without, test["ctc_beam_lm"]["wer"])
    verdict = "met" if reduction >= AIM_RELATIVE_REDUCTION else "missed"
    print(
        f"  relative WER reduction with the LM: {reduction:.0%} against the better decoding without it "
        f"(greedy {relative_reduction(test['ctc_greedy']['wer'], test['ctc_beam_lm']['wer']):.0%}, "
        f"beam {relative_reduction(test['ctc_beam']['wer'], test['ctc_beam_lm']['wer']):.0%}); "
        f"aim >= {AIM_RELATIVE_REDUCTION:.0%}: {verdict}. Speed with the LM: "
        f"{speed['ctc_beam_lm'] / speed['ctc_greedy']:.2f}x greedy's, "
        f"{speed['ctc_beam_lm'] / speed['ctc_beam']:.2f}x the beam's without it"
    )
    return {
        "order": lm_card.order,
        "beam": beam,
        "alpha": alpha,
        "perplexity": lm_card.heldout_perplexity,
        "wer": test["ctc_beam_lm"]["wer"],
        "reduction": reduction,
        "speed": speed["ctc_beam_lm"],
    }


def parse_grid(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated numbers, e.g. 0.5,1,1.5") from None


def main(argv: list[str] | None = None) -> None:
    from components.evaluate.decoding import DEFAULT_BEAM_SIZE
    from components.lm.settings import DEFAULT_LABEL_ORDER

    parser = argparse.ArgumentParser(
        prog="make bench-lm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--workdir", type=Path, help="the corpus is kept (or found) here (default: a temp dir)"
    )
    parser.add_argument(
        "--order", type=int, nargs="+", default=[DEFAULT_LABEL_ORDER], help="n-gram orders, in characters"
    )
    parser.add_argument("--beam", type=int, nargs="+", default=[DEFAULT_BEAM_SIZE], help="beam sizes")
    parser.add_argument(
        "--alpha-grid",
        type=parse_grid,
        default=ALPHA_GRID,
        help=f"LM weights tried on the validation set (default {','.join(f'{a:g}' for a in ALPHA_GRID)})",
    )
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    if not PRETRAINED_MODEL.exists():
        raise SystemExit(f"{PRETRAINED_MODEL} is missing: `make pretrained` makes it")
    with tempfile.TemporaryDirectory(prefix="asrflow-bench-lm-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tarred, validation, test = corpus(workdir)
        bench = workdir / "lm-bench"
        print(
            f"bench-lm: {PRETRAINED_MODEL.parent.name} ({CONFIG} character Conformer-CTC) on its own "
            f"recipe's corpus ({VOICES}, seed {CORPUS_SEED}); LM over {tarred}"
        )
        rows = []
        for order in args.order:
            started = time.monotonic()
            lm_card = build_lm(tarred, bench / f"lm-{order}", order)
            log.info("LM of order %d ready in %s", order, format_seconds(time.monotonic() - started))
            for beam in args.beam:
                out = bench / f"eval-order{order}-beam{beam}"
                started = time.monotonic()
                card = evaluate(Path(lm_card.out_dir), validation, test, out, beam, args.alpha_grid)
                wall = format_seconds(time.monotonic() - started)
                print(f"order {order}, beam {beam} (evaluate: {wall}; report {out / 'report.md'}):")
                rows.append(show(lm_card, card, speeds(out / "report.md", TEST), beam))
        if len(rows) > 1:
            head = ("order", "beam", "alpha", "ppl", "WER+LM", "reduction", "audio-s/s")
            print("  " + " ".join(f"{name:>9}" for name in head))
            for r in rows:
                cells = (
                    r["order"],
                    r["beam"],
                    f"{r['alpha']:g}",
                    f"{r['perplexity']:.3f}",
                    f"{r['wer']:.1%}",
                )
                cells += (f"{r['reduction']:.0%}", f"{r['speed']:.1f}")
                print("  " + " ".join(f"{cell:>9}" for cell in cells))


if __name__ == "__main__":
    main()

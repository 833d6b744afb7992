"""``make bench-finetune``: specialise the shipped pretrained model to voices it never heard.

The pretrained model (``make pretrained``: the ``small`` character Conformer-CTC trained on
espeak-ng voices only) is fine-tuned with ``components/train/conf/finetune_small.yaml`` on
200 utterances of flite voices, then scored on 60 held-out flite utterances before and after.
Aim: at least 40% relative WER reduction, fine-tuning within 10 minutes on the CPU. With
``--baseline`` the same recipe also trains the same architecture from scratch on the same 200
utterances, to show what the pretraining brings. Figures, never asserts.

    python -m tests.bench_finetune [--workdir DIR] [--steps N] [--baseline] [KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import logging
import resource
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from components.progress import format_seconds, setup_logging
from pipelines.local_run import PRETRAINED_MODEL
from tests.bench_quality import make_data, score, train

log = logging.getLogger("asrflow.bench_finetune")

CONFIG = "finetune_small"
VOICES = "flite"
CORPUS_SEED = 11
TRAIN_UTTERANCES = 200
AIM_RELATIVE_REDUCTION = 0.40
BUDGET_S = 600.0


def children_cpu_s() -> float:
    """CPU seconds (user + system) used so far by this process's finished children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_train(
    tarred: Path, validation: Path, run_dir: Path, steps: int | None, overrides: list[str], **settings: Any
) -> tuple[dict[str, Any], float, float]:
    """One ``asrflow train`` run: its card, wall seconds and CPU seconds."""
    cpu_before, started = children_cpu_s(), time.monotonic()
    card = train(tarred, validation, run_dir, CONFIG, steps, overrides, **settings)
    return card, time.monotonic() - started, children_cpu_s() - cpu_before


def relative_reduction(before: float, after: float) -> float:
    """How much of ``before`` went away, as a fraction (negative when it grew)."""
    return (before - after) / before if before else 0.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make bench-finetune", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    parser.add_argument("--steps", type=int, help="fine-tuning steps (default: the config's)")
    parser.add_argument("--baseline", action="store_true", help="also train from scratch, same recipe")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides of the config")
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    from components.train.config import load_config

    if not PRETRAINED_MODEL.exists():
        raise SystemExit(f"{PRETRAINED_MODEL} is missing: `make pretrained` makes it")
    train_ds = load_config(CONFIG, args.overrides).model.train_ds
    with tempfile.TemporaryDirectory(prefix="asrflow-bench-finetune-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tarred, validation, test = make_data(
            workdir, None, train_ds, voices=VOICES, seed=CORPUS_SEED, train_utterances=TRAIN_UTTERANCES
        )
        before = score(PRETRAINED_MODEL, test, workdir / "eval-pretrained")
        card, wall, cpu = timed_train(
            tarred,
            validation,
            workdir / "finetune",
            args.steps,
            args.overrides,
            init_from=str(PRETRAINED_MODEL),
        )
        after = score(Path(card["model"]), test, workdir / "eval-finetuned")
        reduction = relative_reduction(before["wer"], after["wer"])
        print(
            f"bench-finetune: {PRETRAINED_MODEL.parent.name} (espeak-ng voices only) fine-tuned with "
            f"{CONFIG} on {TRAIN_UTTERANCES} flite utterances: {card['steps']} steps, "
            f"{format_seconds(wall)} wall ({cpu / 60:.1f} CPU-min), {card['hours_seen']:.2f} audio hours seen"
        )
        print(f"  60 held-out flite utterances  pretrained: WER {before['wer']:.1%}  CER {before['cer']:.1%}")
        print(
            f"                                fine-tuned: WER {after['wer']:.1%}  CER {after['cer']:.1%}  "
            f"relative WER reduction {reduction:.0%} (aim >= {AIM_RELATIVE_REDUCTION:.0%}; "
            f"{'met' if reduction >= AIM_RELATIVE_REDUCTION else 'missed'}); "
            f"wall {'within' if wall <= BUDGET_S else 'over'} the {BUDGET_S / 60:.0f}-minute budget"
        )
        if args.baseline:
            scratch, scratch_wall, _ = timed_train(
                tarred, validation, workdir / "scratch", card["steps"], args.overrides
            )
            from_scratch = score(Path(scratch["model"]), test, workdir / "eval-scratch")
            scratch_figures = f"WER {from_scratch['wer']:.1%}  CER {from_scratch['cer']:.1%}"
            print(
                f"                                from scratch, same recipe and steps "
                f"({format_seconds(scratch_wall)}): {scratch_figures}"
            )


if __name__ == "__main__":
    main()

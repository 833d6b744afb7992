"""``make pretrained``: the small pretrained model the demo and ``make bench-finetune`` start from.

The project's own recipe, on voices the bundled corpus never uses: about an hour of espeak-ng
speech with the variants of ``tests.corpus.generate.UNHEARD_ESPEAK_VARIANTS`` (corpus seed 7,
so its sentences are not the bundled corpus's), written as tarred shards, bucketed, and
trained with ``components/train/conf/small.yaml`` for 300 steps on the CPU. The model and a
card saying how it was made go to ``tests/data/pretrained/small_espeak/`` (committed: about
16 MB). About 70 min on two CPU cores.

    python -m tests.pretrained [--workdir DIR] [--hours 1.0] [--steps 300] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from components.progress import format_seconds, setup_logging
from pipelines.local_run import PRETRAINED_MODEL
from tests.bench_quality import make_data, score, train

PRETRAINED_DIR = PRETRAINED_MODEL.parent
CONFIG = "small"
VOICES = "espeak-unheard"
CORPUS_SEED = 7
MAX_BYTES = 20 * 2**20


def write_card(out: Path, args: argparse.Namespace, card: dict, test: dict, wall: float) -> None:
    """card.json (the facts) and README.md (how the model was made, by which command)."""
    facts = {
        "command": f"make pretrained  (python -m tests.pretrained --hours {args.hours} --steps {args.steps})",
        "config": CONFIG,
        "voices": VOICES,
        "corpus_seed": CORPUS_SEED,
        "corpus_hours": args.hours,
        "steps": card["steps"],
        "parameters": card["parameters"],
        "hours_seen": card["hours_seen"],
        "train_wall_s": round(wall),
        "held_out": {"utterances": 60, "wer": test["wer"], "cer": test["cer"]},
        "model_bytes": (out / "model.nemo").stat().st_size,
    }
    (out / "card.json").write_text(json.dumps(facts, indent=2, sort_keys=True) + "\n")
    (out / "README.md").write_text(
        f"""# small_espeak: a pretrained character Conformer-CTC

What `make demo` and `make bench-finetune` fine-tune. Made by this repository's own recipe
with `{facts["command"]}`: {args.hours} h of espeak-ng speech in voices the bundled corpus
never uses (variants {", ".join(_unheard())}; corpus seed {CORPUS_SEED}), config `{CONFIG}`
({card["parameters"] / 1e6:.1f}M parameters), {card["steps"]} steps on the CPU
({format_seconds(wall)}, {card["hours_seen"]:.1f} audio hours seen).

On 60 held-out sentences of those voices: WER {test["wer"]:.1%}, CER {test["cer"]:.1%}.
It has never heard flite, nor the espeak-ng variants of the bundled corpus.
"""
    )


def _unheard() -> tuple[str, ...]:
    from tests.corpus.generate import UNHEARD_ESPEAK_VARIANTS

    return UNHEARD_ESPEAK_VARIANTS


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="make pretrained", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--workdir", type=Path, help="keep data and runs here (default: a temp dir)")
    parser.add_argument("--hours", type=float, default=1.0, help="hours of training speech (default 1)")
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--out", type=Path, default=PRETRAINED_DIR, help=f"default {PRETRAINED_DIR}")
    args = parser.parse_args(argv)
    setup_logging()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(143))
    from components.train.config import load_config

    train_ds = load_config(CONFIG).model.train_ds
    with tempfile.TemporaryDirectory(prefix="asrflow-pretrained-") as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        tarred, validation, test = make_data(workdir, args.hours, train_ds, voices=VOICES, seed=CORPUS_SEED)
        started = time.monotonic()
        card = train(tarred, validation, workdir / "run", CONFIG, args.steps, [])
        wall = time.monotonic() - started
        held_out = score(Path(card["model"]), test, workdir / "eval")
        args.out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(card["model"], args.out / "model.nemo")
        size = (args.out / "model.nemo").stat().st_size
        if size > MAX_BYTES:
            raise SystemExit(f"{args.out / 'model.nemo'}: {size / 2**20:.1f} MB, over the 20 MB budget")
        write_card(args.out, args, card, held_out, wall)
    print(
        f"pretrained: {args.out / 'model.nemo'} ({size / 2**20:.1f} MB); held-out WER {held_out['wer']:.1%}"
    )


if __name__ == "__main__":
    main()

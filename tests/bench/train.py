"""Benchmark of CPU training throughput with the estimated bucket bins against no bucketing.

``python -m tests.bench train [--workdir DIR]`` generates (once, cached under the workdir) a
small corpus, writes it as tarred shards, estimates bucket bins with estimate-buckets, then
trains the small CPU config for a fixed number of steps with Lhotse bucketing on the
estimated bins and with bucketing off (same batch_duration), alternating the two, and
prints the throughput of each (audio-seconds of training data per wall-second, from the
run's card: validation and checkpoint time excluded) and their ratio. Figures only.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HOURS = 0.3
SEED = 2
NUM_SHARDS = 4
NUM_BUCKETS = 8
STEPS = 24
BATCH_DURATION = 60.0
REPEATS = 2


def ensure_data(workdir: Path) -> tuple[Path, Path]:
    """Tarred shards with bins in metadata.yaml, and a validation manifest (made once)."""
    from components import storage
    from components.buckets.core import estimate_buckets
    from components.export import export_manifest
    from components.shard.core import write_shards
    from tests.corpus.generate import generate_corpus

    corpus = workdir / "corpus"
    if not (corpus / "SHA256SUMS").exists():
        print(f"generating a {HOURS:g} h corpus in {corpus} (once; reused with --workdir)", flush=True)
        generate_corpus(corpus, 0, 10, 0, SEED, train_files=2, hours=HOURS, splits=("train", "validation"))
    tarred = workdir / "tarred"
    if not storage.is_complete(str(tarred)):
        write_shards(str(corpus / "clean"), str(tarred), num_shards=NUM_SHARDS, seed=SEED, workers=1)
    estimate_buckets(
        str(tarred), num_buckets=NUM_BUCKETS, out_dir=str(workdir / "buckets"), batch_duration=BATCH_DURATION
    )
    validation = Path(export_manifest(str(corpus / "validation"), str(workdir / "validation")))
    return tarred, validation


def train_once(tarred: Path, validation: Path, run_dir: Path, bucketing: bool) -> dict[str, Any]:
    """One ``asrflow train`` run of the small config; returns its card."""
    from components.train.settings import TrainSettings

    settings = TrainSettings(
        tarred_dir=str(tarred),
        val_manifest=str(validation),
        run_dir=str(run_dir),
        config="small",
        max_steps=STEPS,
        checkpoint_every=STEPS,
        overrides=[
            f"trainer.limit_train_batches={STEPS}",
            f"trainer.val_check_interval={STEPS}",
            f"model.train_ds.batch_duration={BATCH_DURATION}",
            f"model.train_ds.use_bucketing={str(bucketing).lower()}",
            f"asrflow.log_every={STEPS}",
        ],
    )
    command = [str(Path(sys.executable).with_name("asrflow")), "train", *settings.to_argv()]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"asrflow train failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    tarred, validation = ensure_data(workdir)
    rates: dict[bool, list[float]] = {True: [], False: []}
    started = time.perf_counter()
    for repeat in range(REPEATS):
        for bucketing in (True, False):
            run_dir = (
                workdir / "runs" / f"{'buckets' if bucketing else 'nobuckets'}-{repeat}-{time.time_ns()}"
            )
            card = train_once(tarred, validation, run_dir, bucketing)
            rates[bucketing].append(card["throughput_audio_s_per_s"])
            print(
                f"  {'bucketing (estimated bins)' if bucketing else 'no bucketing              '}: "
                f"{card['throughput_audio_s_per_s']:.1f} audio-s/s ({STEPS} steps, batch_duration "
                f"{BATCH_DURATION:g} s, run {repeat + 1})",
                flush=True,
            )
    with_bins = statistics.median(rates[True])
    without = statistics.median(rates[False])
    print(
        f"train (small config, CPU, {HOURS:g} h corpus, {NUM_BUCKETS} buckets): "
        f"{with_bins:.1f} audio-s/s with estimated buckets vs {without:.1f} without bucketing: "
        f"ratio {with_bins / without:.2f}x (median of {REPEATS}; {time.perf_counter() - started:.0f} s)"
    )


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.workdir or Path(tmp))

"""``make bench`` section: padding efficiency of the estimated Lhotse bins vs no bucketing.

Durations come from write-shards over the >= 1 h corpus the shards section generates (the
same cache under the bench workdir), so the figure is for real synthetic speech lengths.
"""

from __future__ import annotations

import time
from pathlib import Path

from tests.bench.shards import ensure_corpus

NUM_BUCKETS = (4, 8, 16)
BATCH_DURATION_S = 120.0


def run(workdir: Path) -> None:
    from components.buckets import core
    from components.shard.core import write_shards

    workdir.mkdir(parents=True, exist_ok=True)
    train = ensure_corpus(workdir.parent / "shards")
    tarred = workdir / "tarred"
    if not (tarred / "_SUCCESS").exists():
        write_shards(str(train), str(tarred), 8, 0)
    print(f"batches of {BATCH_DURATION_S:g} s of audio; efficiency = real frames / padded frames")
    for num_buckets in NUM_BUCKETS:
        started = time.perf_counter()
        card = core.estimate_buckets(
            str(tarred),
            num_buckets,
            out_dir=str(workdir / f"k{num_buckets}"),
            batch_duration=BATCH_DURATION_S,
        )
        seconds = time.perf_counter() - started
        bucketed = card["padding_efficiency"]["bucketed"]["efficiency"]
        unbucketed = card["padding_efficiency"]["unbucketed"]["efficiency"]
        print(
            f"  {num_buckets:2d} buckets over {card['utterances']} utterances ({card['hours']:.2f} h): "
            f"{bucketed:.1%} vs {unbucketed:.1%} without bucketing (x{bucketed / unbucketed:.2f}); "
            f"estimated in {seconds:.1f} s"
        )

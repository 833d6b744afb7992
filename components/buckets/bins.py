"""Lhotse duration bins, and the padding they save, measured with NeMo's samplers.

The bins come from Lhotse's ``estimate_duration_buckets``, exactly as NeMo's
``scripts/speech_recognition/estimate_duration_bins.py`` makes them: ``K - 1`` ascending
boundaries (rounded to 5 digits) for ``K`` buckets, bucket ``i`` holding durations in
``[bins[i-1], bins[i])``, each bucket about the same hours of audio. That is the form of
NeMo's ``train_ds.bucket_duration_bins`` (with ``num_buckets: K``).

The padding efficiency (real frames / frames after padding to the longest utterance of
each batch) is that of batches of ``batch_duration`` seconds made by the samplers NeMo trains
with: Lhotse's ``DynamicBucketingSampler`` with these bins, against ``DynamicCutSampler``
(what NeMo uses without bucketing, i.e. one bucket). Both are seeded.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from components.buckets.card import BucketsCard
from components.buckets.errors import BucketError

STEP = BucketsCard.STEP
FRAME_SHIFT_S = 0.01  # NeMo's audio preprocessor window stride: 100 feature frames a second
SAMPLE_RATE = 16000
BUFFER_SIZE = 20000  # the bucket_buffer_size of asrflow's training configs
BIN_DIGITS = 5  # as NeMo's estimate_duration_bins.py prints them


@dataclass(frozen=True)
class _Length:
    """The least Lhotse's TimeConstraint measures: a duration in seconds."""

    duration: float


def estimate_bins(durations: Sequence[float], num_buckets: int) -> list[float]:
    """Lhotse's ``estimate_duration_buckets``: ``num_buckets - 1`` ascending boundaries.

    Fewer come back when the durations cannot fill that many buckets (say, most utterances
    share one duration); repeated values are dropped so that no bucket is empty by design.
    """
    from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

    if num_buckets < 2:
        raise BucketError(f"{STEP}: --num-buckets must be at least 2, got {num_buckets}")
    if num_buckets > len(durations):
        raise BucketError(
            f"{STEP}: {num_buckets} buckets need at least as many utterances; there are {len(durations)}"
        )
    raw = estimate_duration_buckets((_Length(d) for d in durations), num_buckets=num_buckets)
    bins: list[float] = []
    for value in raw:
        rounded = round(float(value), BIN_DIGITS)
        if not bins or rounded > bins[-1]:
            bins.append(rounded)
    return bins


def frames(duration: float) -> int:
    """Feature frames of an utterance, as NeMo's preprocessor makes them."""
    from lhotse.utils import compute_num_frames

    return compute_num_frames(duration, FRAME_SHIFT_S, SAMPLE_RATE)


def sample(durations: Sequence[float], size: int, seed: int) -> list[float]:
    """At most ``size`` of the durations: all of them, or a seeded random sample in order."""
    if len(durations) <= size:
        return list(durations)
    import numpy as np

    picked = np.sort(np.random.default_rng(seed).choice(len(durations), size=size, replace=False))
    return [durations[int(i)] for i in picked]


def _batches_efficiency(sampler: Any) -> dict[str, Any]:
    real = padded = batches = utterances = 0
    for batch in sampler:
        lengths = [frames(cut.duration) for cut in batch]
        real += sum(lengths)
        padded += len(lengths) * max(lengths)
        batches += 1
        utterances += len(lengths)
    return {
        "efficiency": round(real / padded, 4) if padded else 0.0,
        "real_frames": real,
        "padded_frames": padded,
        "batches": batches,
        "mean_batch_size": round(utterances / batches, 2) if batches else 0.0,
    }


def padding_efficiency(
    durations: Sequence[float], bins: Sequence[float], batch_duration: float, seed: int
) -> dict[str, Any]:
    """Real / padded frames of one epoch of batches, with these bins and without bucketing.

    Batches are what NeMo's Lhotse dataloader forms for ``batch_duration`` (Lhotse's
    TimeConstraint: the longest utterance times the batch size stays within it).
    """
    from lhotse import CutSet, MonoCut
    from lhotse.dataset.sampling import DynamicBucketingSampler, DynamicCutSampler

    if batch_duration <= 0:
        raise BucketError(f"{STEP}: --batch-duration must be positive, got {batch_duration}")
    cuts = CutSet.from_cuts(
        MonoCut(id=f"u{index:09d}", start=0.0, duration=duration, channel=0)
        for index, duration in enumerate(durations)
    )
    with warnings.catch_warnings():
        # Lhotse warns about eager CutSets and small datasets; neither matters for a simulation
        warnings.simplefilter("ignore")
        bucketed = _batches_efficiency(
            DynamicBucketingSampler(
                cuts,
                max_duration=batch_duration,
                duration_bins=list(bins),
                shuffle=True,
                seed=seed,
                buffer_size=BUFFER_SIZE,
            )
        )
        unbucketed = _batches_efficiency(
            DynamicCutSampler(cuts, max_duration=batch_duration, shuffle=True, seed=seed)
        )
    ratio = bucketed["efficiency"] / unbucketed["efficiency"] if unbucketed["efficiency"] else 0.0
    return {
        "batch_duration": batch_duration,
        "frame_shift": FRAME_SHIFT_S,
        "utterances": len(durations),
        "seed": seed,
        "bucketed": bucketed,
        "unbucketed": unbucketed,
        "ratio": round(ratio, 4),
    }

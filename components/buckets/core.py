"""estimate-buckets: Lhotse duration bins for a NeMo tarred dataset, and what they are worth.

Reads only the manifest of a tarred dataset (``tarred_audio_manifest.json``, or the
``sharded_manifests/manifest_<i>.json`` files when there is no full manifest), never the
audio. Then:

- estimates the bins with Lhotse's ``estimate_duration_buckets``, exactly as NeMo's
  ``scripts/speech_recognition/estimate_duration_bins.py`` does: ``K - 1`` ascending
  boundaries (rounded to 5 digits) for ``K`` buckets, bucket ``i`` holding durations in
  ``[bins[i-1], bins[i])``. That is the form of NeMo's ``train_ds.bucket_duration_bins``
  (with ``num_buckets: K``), and each bucket holds about the same hours of audio;
- measures the padding efficiency (real frames / frames after padding to the longest
  utterance of each batch) of batches of ``batch_duration`` seconds made by the samplers
  NeMo trains with: Lhotse's ``DynamicBucketingSampler`` with these bins, against
  ``DynamicCutSampler`` (what NeMo uses without bucketing, i.e. one bucket). Both are seeded;
  above ``efficiency_sample`` utterances a seeded random sample is simulated;
- draws a duration histogram with the bin edges (``duration_histogram.png``);
- writes the bins into the dataset's ``metadata.yaml`` (the ``dataset_config`` bucket fields
  and a ``buckets`` section; every other key is kept, the file is replaced atomically) and
  into the card.
"""

from __future__ import annotations

import logging
import math
import warnings
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from components import cards, storage
from components.manifest import ManifestError, Rejects, iter_manifest
from components.progress import Progress

log = logging.getLogger("asrflow.estimate_buckets")

STEP = "estimate-buckets"
MANIFEST_NAME = "tarred_audio_manifest.json"
SHARDED_DIR = "sharded_manifests"
METADATA_NAME = "metadata.yaml"
HISTOGRAM_NAME = "duration_histogram.png"
OUT_SUBDIR = "buckets"
FRAME_SHIFT_S = 0.01  # NeMo's audio preprocessor window stride: 100 feature frames a second
SAMPLE_RATE = 16000
BUFFER_SIZE = 20000  # the bucket_buffer_size of asrflow's training configs
BIN_DIGITS = 5  # as NeMo's estimate_duration_bins.py prints them


class BucketError(ValueError):
    """Input that cannot give duration bins; the message says which file and why."""


@dataclass(frozen=True)
class _Length:
    """The least Lhotse's TimeConstraint measures: a duration in seconds."""

    duration: float


def manifest_uris(tarred_dir: str) -> list[str]:
    """The full tarred manifest, or else every sharded manifest in shard order."""
    full = storage.join(tarred_dir, MANIFEST_NAME)
    if storage.exists(full):
        return [full]
    try:
        sharded = storage.list_files(storage.join(tarred_dir, SHARDED_DIR), suffix=".json")
    except FileNotFoundError:
        sharded = []
    uris = [f.uri for f in sharded if storage.basename(f.uri).startswith("manifest_")]
    if not uris:
        raise BucketError(
            f"{STEP}: no {MANIFEST_NAME} and no {SHARDED_DIR}/manifest_<i>.json in {tarred_dir} "
            "(is it the output of write-shards?)"
        )

    def shard_number(uri: str) -> int:
        stem = storage.basename(uri)[len("manifest_") : -len(".json")]
        return int(stem) if stem.isdigit() else -1

    return sorted(uris, key=shard_number)


def read_durations(uris: Sequence[str], rejects: Rejects) -> array:
    """Every valid duration (seconds) in the manifests, in order; bad lines go to ``rejects``."""
    durations = array("d")
    progress = Progress(f"{STEP} manifest lines", None)
    for uri in uris:
        for line_number, entry in iter_manifest(uri):
            progress.update()
            where = f"{uri}:{line_number}"
            if isinstance(entry, ManifestError):
                rejects.add(where, uri, "bad_manifest_line", str(entry))
                continue
            duration = entry["duration"]
            if not math.isfinite(duration) or duration <= 0:
                rejects.add(str(entry["audio_filepath"]), where, "bad_duration", f"duration {duration!r}")
                continue
            durations.append(float(duration))
    progress.finish()
    return durations


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


def _frames(duration: float) -> int:
    from lhotse.utils import compute_num_frames

    return compute_num_frames(duration, FRAME_SHIFT_S, SAMPLE_RATE)


def _sample(durations: Sequence[float], size: int, seed: int) -> list[float]:
    if len(durations) <= size:
        return list(durations)
    import numpy as np

    picked = np.sort(np.random.default_rng(seed).choice(len(durations), size=size, replace=False))
    return [durations[int(i)] for i in picked]


def _batches_efficiency(sampler: Any) -> dict[str, Any]:
    real = padded = batches = utterances = 0
    for batch in sampler:
        frames = [_frames(cut.duration) for cut in batch]
        real += sum(frames)
        padded += len(frames) * max(frames)
        batches += 1
        utterances += len(frames)
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


def plot_histogram(
    durations: Sequence[float],
    bins: Sequence[float],
    uri: str,
    title: str,
    subtitle: str,
) -> None:
    """Save a duration histogram with the bucket edges as PNG at ``uri`` (local or gs://)."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.asarray(durations, dtype=np.float64)
    low, high = float(values.min()), float(values.max())
    edges = [low, *[b for b in bins if low < b < high], high]
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    for index, (start, end) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if index % 2:
            ax.axvspan(start, end, color="#eef2f7", zorder=0, linewidth=0)
    ax.hist(values, bins=min(120, max(20, len(values) // 25)), color="#3b6ea5", zorder=2)
    for index, edge in enumerate(bins):
        ax.axvline(
            edge,
            color="#d9480f",
            linestyle="--",
            linewidth=1.1,
            zorder=3,
            label=f"bucket edges ({len(bins) + 1} buckets, about equal hours each)" if index == 0 else None,
        )
    ax.set_xlim(0, high * 1.02)
    ax.set_xlabel("utterance duration (seconds)")
    ax.set_ylabel("utterances")
    ax.set_title(f"{title}\n{subtitle}", fontsize=11)
    ax.grid(axis="y", color="#dddddd", zorder=1)
    if bins:
        ax.legend(loc="upper right", frameon=True)
    fig.tight_layout()
    buffer = io.BytesIO()
    # no Software/date metadata: the same data gives the same bytes
    fig.savefig(buffer, format="png", metadata={"Software": None})
    plt.close(fig)
    storage.write_bytes(uri, buffer.getvalue())


def update_metadata(tarred_dir: str, buckets: dict[str, Any]) -> str:
    """Write the bins into ``metadata.yaml``, keeping every other key; atomic replace.

    ``dataset_config.num_buckets`` and ``dataset_config.bucket_duration_bins`` are NeMo's
    fields; the ``buckets`` section holds the rest (max duration, padding efficiency, ...).
    A missing file is created with just these.
    """
    import yaml

    uri = storage.join(tarred_dir, METADATA_NAME)
    metadata: dict[str, Any] = {}
    if storage.exists(uri):
        try:
            loaded = yaml.safe_load(storage.read_text(uri))
        except yaml.YAMLError as err:
            raise BucketError(f"{uri}: not valid YAML ({err})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise BucketError(f"{uri}: expected a mapping at the top, got {type(loaded).__name__}")
        metadata = loaded or {}
    else:
        log.warning("%s does not exist; writing one with the bucket fields only", uri)
    dataset_config = metadata.get("dataset_config")
    if dataset_config is None:
        dataset_config = metadata["dataset_config"] = {}
    if not isinstance(dataset_config, dict):
        raise BucketError(f"{uri}: dataset_config must be a mapping")
    dataset_config["num_buckets"] = buckets["num_buckets"]
    dataset_config["bucket_duration_bins"] = list(buckets["bucket_duration_bins"])
    metadata["buckets"] = buckets
    storage.write_text(uri, yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False, width=100))
    return uri


def resolve_tarred_dir(tarred: str) -> str:
    """A tarred directory, or a write-shards ``card.json`` that names one."""
    if storage.basename(tarred) == cards.CARD_NAME:
        card = cards.read_card(tarred)
        if not card.get("out_dir"):
            raise BucketError(f"{tarred}: card has no out_dir (is it a write-shards card?)")
        return str(card["out_dir"])
    return tarred.rstrip("/")


def _percent(value: float) -> str:
    return f"{value:.1%}"


def estimate_buckets(
    tarred_dir: str,
    num_buckets: int = 30,
    out_dir: str | None = None,
    max_duration: float | None = None,
    min_duration: float = 0.0,
    batch_duration: float = 600.0,
    seed: int = 0,
    efficiency_sample: int = 200_000,
    max_reject_fraction: float = 0.01,
    write_metadata: bool = True,
) -> dict[str, Any]:
    """Estimate bins for a tarred dataset; write histogram, metadata.yaml fields, card, _SUCCESS.

    Args:
        tarred_dir: the write-shards output (or its card.json); local or gs://.
        num_buckets: buckets wanted (K); the bins are the K-1 boundaries.
        out_dir: where card.json and the histogram go; default ``<tarred_dir>/buckets``.
        max_duration: leave out longer utterances (seconds); default: the longest there is.
        min_duration: leave out shorter utterances (seconds).
        batch_duration: seconds of audio in a batch, for the padding-efficiency figures.
        seed: seed of the simulated samplers (and of the sample, for big datasets).
        efficiency_sample: simulate at most this many utterances (a seeded random sample).
        max_reject_fraction: fail when more manifest lines than this are unusable.
        write_metadata: update ``metadata.yaml`` in ``tarred_dir``.

    Returns:
        The card: bins, num_buckets, max_duration, padding efficiency, counts, paths.
    """
    tarred_dir = resolve_tarred_dir(tarred_dir)
    out_dir = (out_dir or storage.join(tarred_dir, OUT_SUBDIR)).rstrip("/")
    if max_duration is not None and max_duration <= min_duration:
        raise BucketError(f"{STEP}: --max-duration {max_duration} must exceed --min-duration {min_duration}")
    if not storage.is_complete(tarred_dir):
        log.warning("%s has no _SUCCESS marker: not written by write-shards, or not finished", tarred_dir)
    uris = manifest_uris(tarred_dir)
    rejects = Rejects()
    every = read_durations(uris, rejects)
    rejects.check(len(every), max_reject_fraction, STEP)
    if not every:
        raise BucketError(f"{STEP}: no usable duration in {', '.join(uris)}")
    upper = max(every) if max_duration is None else max_duration
    durations = array("d", (d for d in every if min_duration <= d <= upper))
    filtered = len(every) - len(durations)
    if not durations:
        raise BucketError(f"{STEP}: no utterance between {min_duration} and {upper} seconds")
    hours = sum(durations) / 3600
    log.info(
        "%s: %d utterances, %.2f hours (%d outside the duration limits)",
        STEP,
        len(durations),
        hours,
        filtered,
    )
    bins = estimate_bins(durations, num_buckets)
    if len(bins) + 1 < num_buckets:
        log.warning("%s: the durations fill only %d of %d buckets", STEP, len(bins) + 1, num_buckets)
    simulated = _sample(durations, efficiency_sample, seed)
    efficiency = padding_efficiency(simulated, bins, batch_duration, seed)
    histogram_uri = storage.join(out_dir, HISTOGRAM_NAME)
    plot_histogram(
        durations,
        bins,
        histogram_uri,
        title=f"{len(durations):,} utterances, {hours:,.2f} hours, {len(bins) + 1} duration buckets",
        subtitle=(
            f"padding efficiency at {batch_duration:g} s batches: "
            f"{_percent(efficiency['bucketed']['efficiency'])} with these buckets, "
            f"{_percent(efficiency['unbucketed']['efficiency'])} without"
        ),
    )
    buckets = {
        "num_buckets": len(bins) + 1,
        "bucket_duration_bins": bins,
        "max_duration": round(upper, BIN_DIGITS),
        "min_duration": min_duration,
        "num_buckets_requested": num_buckets,
        "utterances": len(durations),
        "hours": round(hours, 6),
        "padding_efficiency": {
            "batch_duration": batch_duration,
            "bucketed": efficiency["bucketed"]["efficiency"],
            "unbucketed": efficiency["unbucketed"]["efficiency"],
            "ratio": efficiency["ratio"],
        },
        "histogram": histogram_uri,
    }
    metadata_uri = update_metadata(tarred_dir, dict(buckets)) if write_metadata else None
    card = {
        "step": STEP,
        "tarred_dir": tarred_dir,
        "out_dir": out_dir,
        "manifests": uris,
        **buckets,
        "filtered": filtered,
        "rejected": len(rejects),
        "rejects_by_reason": rejects.counts(),
        "padding_efficiency": efficiency,
        "metadata": metadata_uri,
    }
    if len(rejects):
        rejects.write(storage.join(out_dir, "rejects.jsonl"))
        card["rejects"] = storage.join(out_dir, "rejects.jsonl")
    cards.write_card(out_dir, card, echo=False)
    storage.mark_complete(out_dir)
    return card


def summary_lines(card: dict[str, Any]) -> Iterator[str]:
    """What a person reads first: the bins and the padding efficiency, with and without."""
    efficiency = card["padding_efficiency"]
    yield f"num_buckets={card['num_buckets']} max_duration={card['max_duration']}"
    yield "bucket_duration_bins=[" + ",".join(f"{b:g}" for b in card["bucket_duration_bins"]) + "]"
    for name in ("bucketed", "unbucketed"):
        figures = efficiency[name]
        yield (
            f"padding efficiency {name:>10}: {figures['efficiency']:.4f} "
            f"({figures['real_frames']:,} real / {figures['padded_frames']:,} padded frames, "
            f"{figures['batches']:,} batches of {efficiency['batch_duration']:g} s, "
            f"{figures['mean_batch_size']:g} utterances each)"
        )
    yield f"padding efficiency ratio bucketed/unbucketed: {efficiency['ratio']:.3f}"
    yield f"histogram: {card['histogram']}"

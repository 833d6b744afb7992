"""estimate-buckets: Lhotse duration bins for a NeMo tarred dataset, and what they are worth.

Reads only the manifest of a tarred dataset (``tarred_audio_manifest.json``, or the
``sharded_manifests/manifest_<i>.json`` files when there is no full manifest), never the
audio (:mod:`~components.buckets.durations`). Then:

- estimates the bins with Lhotse's ``estimate_duration_buckets``, as NeMo's
  ``estimate_duration_bins.py`` does, and measures the padding efficiency of batches made
  by the samplers NeMo trains with, with these bins and without bucketing
  (:mod:`~components.buckets.bins`); above ``efficiency_sample`` utterances a seeded random
  sample is simulated;
- draws a duration histogram with the bin edges (:mod:`~components.buckets.histogram`);
- writes the bins into the dataset's ``metadata.yaml`` (the ``dataset_config`` bucket fields
  and a ``buckets`` section; every other key is kept, the file is replaced atomically;
  :mod:`~components.buckets.metadata`) and into the card.
"""

from __future__ import annotations

import logging
from array import array
from collections.abc import Sequence
from typing import Any

from components import layout, mixture, storage
from components.buckets.bins import BIN_DIGITS, estimate_bins, padding_efficiency, sample
from components.buckets.card import BucketsCard
from components.buckets.durations import manifest_uris, mixture_durations, read_durations, resolve_tarred_dir
from components.buckets.errors import BucketError
from components.buckets.histogram import HISTOGRAM_NAME, plot_histogram
from components.buckets.metadata import update_metadata
from components.manifest import DEFAULT_MAX_REJECT_FRACTION, Rejects

log = logging.getLogger("asrflow.estimate_buckets")

STEP = BucketsCard.STEP
OUT_SUBDIR = "buckets"
"""The default output directory, below the tarred dataset's."""

__all__ = ["BucketError", "estimate_buckets"]


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
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    write_metadata: bool = True,
    weight: float = 1.0,
    mix: Sequence[str] = (),
    mix_temperature: float = 1.0,
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
        write_metadata: update ``metadata.yaml`` in ``tarred_dir`` (never for a mixture: its bins
            are no single dataset's).
        weight: ``tarred_dir``'s weight in a mixture with ``mix``.
        mix: more tarred datasets, ``DIR=WEIGHT`` each: the bins are then estimated over the
            mixture training draws (:func:`~components.buckets.durations.mixture_durations`),
            and the output goes by default to ``<tarred_dir>/buckets/mix-<key>``.
        mix_temperature: NeMo's reweight_temperature of the mixture.

    Returns:
        The card (:class:`BucketsCard`, as JSON): bins, num_buckets, max_duration, padding
        efficiency, counts, paths.
    """
    tarred_dir = resolve_tarred_dir(tarred_dir)
    try:
        sources = mixture.mixture_sources(tarred_dir, weight, mix, resolve_dir=resolve_tarred_dir)
        temperature = mixture.check_temperature(mix_temperature)
    except mixture.MixtureError as err:
        raise BucketError(f"{STEP}: {err}") from None
    default_out = storage.join(tarred_dir, OUT_SUBDIR)
    if mix:
        default_out = storage.join(default_out, f"mix-{mixture.mixture_key(sources, temperature)}")
        write_metadata = False
    out_dir = (out_dir or default_out).rstrip("/")
    if max_duration is not None and max_duration <= min_duration:
        raise BucketError(f"{STEP}: --max-duration {max_duration} must exceed --min-duration {min_duration}")
    per_source = []
    uris: list[str] = []
    rejects = Rejects()
    for source in sources:
        if not storage.is_complete(source.uri):
            log.warning("%s has no _SUCCESS marker: not written by write-shards, or not finished", source.uri)
        source_uris = manifest_uris(source.uri)
        uris += source_uris
        per_source.append(read_durations(source_uris, rejects))
    rejects.check(sum(len(d) for d in per_source), max_reject_fraction, STEP)
    shares = mixture.probabilities([s.weight for s in sources], temperature)
    every = mixture_durations(per_source, shares) if mix else per_source[0]
    if mix:
        for source, durations, share in zip(sources, per_source, shares, strict=True):
            log.info(
                "%s: %.1f%% of the mixture's utterances from %s (%d utterances)",
                STEP,
                100 * share,
                source.uri,
                len(durations),
            )
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
    efficiency = padding_efficiency(sample(durations, efficiency_sample, seed), bins, batch_duration, seed)
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
    card = BucketsCard(
        out_dir=out_dir,
        tarred_dir=tarred_dir,
        manifests=uris,
        num_buckets=len(bins) + 1,
        bucket_duration_bins=bins,
        max_duration=round(upper, BIN_DIGITS),
        min_duration=min_duration,
        num_buckets_requested=num_buckets,
        utterances=len(durations),
        hours=round(hours, 6),
        padding_efficiency=efficiency,
        histogram=histogram_uri,
        filtered=filtered,
        rejected=len(rejects),
        rejects_by_reason=rejects.counts(),
        mixture=[
            {
                "tarred_dir": source.uri,
                "weight": source.weight,
                "share": round(share, 6),
                "utterances": len(d),
            }
            for source, share, d in zip(sources, shares, per_source, strict=True)
        ]
        if mix
        else [],
        mix_temperature=temperature if mix else None,
    )
    if write_metadata:
        card.metadata = update_metadata(tarred_dir, card.metadata_section())
    if len(rejects):
        card.rejects = storage.join(out_dir, layout.REJECTS_NAME)
        rejects.write(card.rejects)
    card.write(echo=False)
    storage.mark_complete(out_dir)
    return card.to_dict()

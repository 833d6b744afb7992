"""The durations of a tarred dataset, read from its manifests (never from the audio)."""

from __future__ import annotations

import math
from array import array
from collections.abc import Sequence

from components import layout, manifest, storage
from components.buckets.card import BucketsCard
from components.buckets.errors import BucketError
from components.cards import CardError
from components.manifest import ManifestError, Rejects, iter_manifest
from components.progress import Progress
from components.shard.card import ShardsCard

STEP = BucketsCard.STEP


def resolve_tarred_dir(tarred: str) -> str:
    """A tarred directory, or a write-shards ``card.json`` that names one (its ``out_dir``)."""
    if storage.basename(tarred) == layout.CARD_NAME:
        try:
            return ShardsCard.read(tarred).out_dir
        except CardError as err:
            raise BucketError(f"{STEP}: {err}") from None
    return tarred.rstrip("/")


def manifest_uris(tarred_dir: str) -> list[str]:
    """The full tarred manifest, or else every sharded manifest in shard order."""
    uris = manifest.tarred_manifest_uris(tarred_dir)
    if not uris:
        raise BucketError(
            f"{STEP}: no {layout.TARRED_MANIFEST_NAME} and no {layout.sharded_manifest_name('<i>')} "
            f"in {tarred_dir} (is it the output of write-shards?)"
        )
    return uris


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


MIXTURE_LIMIT = 2_000_000
"""At most this many durations stand for a mixture (unless its sources hold more together)."""


def mixture_durations(per_source: Sequence[Sequence[float]], shares: Sequence[float]) -> array:
    """The durations of a weighted mixture, as its training draws them; deterministic.

    Training draws each next utterance from source ``k`` with probability ``shares[k]``, so
    ``m_k = shares[k] * N`` of ``N`` utterances come from source ``k``, spread over its own
    durations. The stand-in takes exactly that many from each: its sorted durations at
    evenly spaced ranks (each one ``m_k / n_k`` times when ``m_k`` is a multiple of ``n_k``).
    ``N`` is the least that takes every utterance of every source at least once
    (``max_k n_k / shares[k]``), within :data:`MIXTURE_LIMIT` (or all the sources' utterances,
    when more). Weights proportional to the sources' sizes give their durations as they are.
    """
    sizes = [len(durations) for durations in per_source]
    needed = max(n / share for n, share in zip(sizes, shares, strict=True) if share > 0)
    total = min(math.ceil(needed - 1e-9), max(MIXTURE_LIMIT, sum(sizes)))
    mixed = array("d")
    for durations, share in zip(per_source, shares, strict=True):
        ordered = sorted(durations)
        count = round(share * total)
        mixed.extend(ordered[(j * len(ordered)) // count] for j in range(count))
    return mixed

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

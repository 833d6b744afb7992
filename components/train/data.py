"""Training data for NeMo's Lhotse dataloading: tarred shards, bucket bins, validation sets.

Shards are read where they are. Local shards are plain paths. Shards on ``gs://`` are
streamed with a ``pipe:`` command (NeMo's Lhotse tarred reader runs it and reads the tar
from its stdout): ``python -m components.train.cat gs://…/audio_<i>.tar``, which reads with
google-cloud-storage, so Workload Identity and ``STORAGE_EMULATOR_HOST`` apply and the
image needs no gcloud. The small sharded manifests are copied to local disk first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import yaml

from components import manifest, storage

log = logging.getLogger("asrflow.train")

_TAR = re.compile(r"audio_(\d+)\.tar$")
_SHARD_MANIFEST = re.compile(r"manifest_(\d+)\.json$")


class DataError(ValueError):
    """Training or validation data that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TarredDataset:
    """Where NeMo's Lhotse loader finds a tarred dataset, and what its metadata says.

    Attributes:
        uri: the tarred directory (local or gs://).
        num_shards: shards ``0..num_shards-1``.
        manifest_filepath: NeMo sharded-manifest specifier (``manifest__OP_0..N_CL_.json``).
        tarred_audio_filepaths: NeMo tar specifier, a local path or a ``pipe:`` command.
        metadata: the parsed ``metadata.yaml`` (empty when there is none).
    """

    uri: str
    num_shards: int
    manifest_filepath: str
    tarred_audio_filepaths: str
    metadata: dict[str, Any]

    def bucket_duration_bins(self) -> list[float] | None:
        """The bins estimate-buckets wrote into metadata.yaml, or None.

        Looked up where NeMo keeps them (``dataset_config.bucket_duration_bins``), then in the
        ``buckets`` section estimate-buckets adds, then at the top level.
        """
        bins = None
        for section in (self.metadata.get("dataset_config"), self.metadata.get("buckets"), self.metadata):
            if isinstance(section, dict) and section.get("bucket_duration_bins") is not None:
                bins = section["bucket_duration_bins"]
                break
        if bins is None:
            return None
        if not isinstance(bins, list) or not bins or not all(isinstance(b, (int, float)) for b in bins):
            raise DataError(
                f"{storage.join(self.uri, 'metadata.yaml')}: bucket_duration_bins must be a list of numbers"
            )
        return [float(b) for b in bins]

    def hours(self) -> float | None:
        """Hours of audio, as write-shards recorded them (``asrflow.hours``), or None."""
        for section in (self.metadata.get("asrflow"), self.metadata):
            if isinstance(section, dict) and isinstance(section.get("hours"), (int, float)):
                return float(section["hours"])
        return None


def _shard_ids(files: list[storage.FileInfo], pattern: re.Pattern[str]) -> list[int]:
    return sorted(int(m.group(1)) for f in files if (m := pattern.search(storage.basename(f.uri))))


def open_tarred_dataset(uri: str, local_dir: str) -> TarredDataset:
    """Check a NeMo tarred directory and describe it for the Lhotse loader.

    Args:
        uri: directory with ``audio_<i>.tar``, ``sharded_manifests/manifest_<i>.json`` and
            (optionally) ``metadata.yaml``; local or gs://.
        local_dir: a local directory for copies of remote sharded manifests.

    Raises:
        DataError: no shards, or tars and manifests that do not pair up as 0..N-1.
    """
    try:
        tars = _shard_ids(storage.list_files(uri, suffix=".tar"), _TAR)
        manifests = _shard_ids(
            storage.list_files(storage.join(uri, "sharded_manifests"), ".json"), _SHARD_MANIFEST
        )
    except FileNotFoundError as err:
        raise DataError(f"{uri}: not a NeMo tarred dataset ({err})") from None
    if not tars:
        raise DataError(f"{uri}: no audio_<i>.tar shards (is this the output of asrflow write-shards?)")
    if tars != list(range(len(tars))):
        raise DataError(f"{uri}: shard ids must be 0..{len(tars) - 1}, found {tars[:10]}…")
    if manifests != tars:
        missing = sorted(set(tars) - set(manifests))
        raise DataError(f"{uri}/sharded_manifests: no manifest_<i>.json for shard(s) {missing[:10]}")
    n = len(tars)
    metadata_uri = storage.join(uri, "metadata.yaml")
    metadata: dict[str, Any] = {}
    if storage.exists(metadata_uri):
        loaded = yaml.safe_load(storage.read_text(metadata_uri))
        if loaded is not None and not isinstance(loaded, dict):
            raise DataError(f"{metadata_uri}: expected a mapping")
        metadata = loaded or {}
    if storage.is_gcs(uri):
        manifest_dir = Path(local_dir, "sharded_manifests")
        for i in range(n):
            target = manifest_dir / f"manifest_{i}.json"
            if not target.exists():
                storage.download_file(storage.join(uri, "sharded_manifests", f"manifest_{i}.json"), target)
        manifest_spec = str(manifest_dir / f"manifest__OP_0..{n - 1}_CL_.json")
        cat = f"{shlex.quote(sys.executable)} -m components.train.cat"
        tar_spec = f"pipe:{cat} {storage.join(uri, f'audio__OP_0..{n - 1}_CL_.tar')}"
    else:
        manifest_spec = str(Path(uri, "sharded_manifests", f"manifest__OP_0..{n - 1}_CL_.json"))
        tar_spec = str(Path(uri, f"audio__OP_0..{n - 1}_CL_.tar"))
    return TarredDataset(uri, n, manifest_spec, tar_spec, metadata)


def prepare_validation_manifest(uri: str, local_dir: str) -> tuple[str, int, float]:
    """A local copy of a validation manifest that NeMo can read as it is.

    Relative ``audio_filepath`` values are resolved against the manifest's directory;
    audio on gs:// is copied to ``local_dir``; texts get the shared normalisation (what the
    model is trained and scored on). Entries whose text normalises to nothing are dropped
    with a count in the log.

    Returns:
        (local manifest path, utterances, hours)

    Raises:
        DataError: a bad line (named by file and line) or missing audio file.
    """
    base = storage.parent(uri)
    audio_dir = Path(local_dir, "audio")
    entries = []
    empty = 0
    try:
        items = manifest.read_manifest(uri)
    except manifest.ManifestError as err:
        raise DataError(str(err)) from None
    except FileNotFoundError:
        raise DataError(f"validation manifest not found: {uri}") from None
    for line_number, entry in enumerate(items, start=1):
        path = entry["audio_filepath"]
        if not storage.is_gcs(path) and not Path(path).is_absolute():
            path = storage.join(base, path)
        if storage.is_gcs(path):
            local = audio_dir / f"{line_number:07d}_{storage.basename(path)}"
            if not local.exists():
                storage.download_file(path, local)
            path = str(local)
        elif not Path(path).is_file():
            raise DataError(f"{uri}:{line_number}: audio file not found: {path}")
        text = manifest.normalize_text(entry["text"])
        if not text:
            empty += 1
            continue
        entries.append({**entry, "audio_filepath": str(Path(path).resolve()), "text": text})
    if not entries:
        raise DataError(f"{uri}: no usable utterances")
    if empty:
        log.warning(
            "validation manifest %s: %d utterance(s) with no text after normalisation left out", uri, empty
        )
    out = str(Path(local_dir, "validation_manifest.json"))
    manifest.write_manifest(out, entries)
    return out, len(entries), sum(float(e["duration"]) for e in entries) / 3600


def data_seed(base_seed: int, resume_step: int) -> int:
    """The data-order seed for a run attempt that starts at ``resume_step``.

    A resumed attempt gets a different seed from the attempt it continues, so it does not
    replay the batches seen before the preemption; the same attempt gets the same seed.
    """
    digest = hashlib.sha256(f"asrflow-data:{base_seed}:{resume_step}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 2**30

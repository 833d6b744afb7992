"""Copying planned files into a download's directory: atomic, checked, from any kind of source.

Each file is written under a temporary name and renamed (local) or uploaded create-only
(GCS), and checked against the source's size and checksum before it counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import tempfile

from components import outputs, storage
from components.columns import Columns
from components.download.card import PARQUET
from components.download.checksums import is_complete_copy, new_hash, record_checksum
from components.download.errors import DownloadError
from components.download.files import HUB, Plan, SourceFile
from components.download.hub import fetch_hub_file
from components.download.parquet_stats import check_schema
from components.download.transfer import Transfer

STAGING_NAME = storage.TEMP_PREFIX + "staging"
"""Where hub files land inside a local output directory before they are renamed into place."""


def target_uri(out: str, file: SourceFile) -> str:
    """Where a planned file goes below ``out``."""
    return storage.join(out, *file.path.split("/"))


def remove_stale_temporaries(out: str) -> int:
    """Delete temporary files a killed run left in a local ``out`` (not the hub staging area,
    which holds resumable partial downloads, nor lock files). Returns how many went. Only the
    holder of ``out``'s lock calls it: another run's temporaries are never touched."""
    if storage.is_gcs(out) or not os.path.isdir(out):
        return 0
    removed = 0
    for directory, subdirs, names in os.walk(out):
        subdirs[:] = [d for d in subdirs if d != STAGING_NAME]
        for name in names:
            if name.startswith(storage.TEMP_PREFIX) and not outputs.is_lock_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


@dataclasses.dataclass
class Copier:
    """Copies one planned file to its place under ``out``; knows the source kind."""

    plan: Plan
    out: str
    transfer: Transfer
    columns: Columns
    token: str | None = None

    def staging(self) -> str:
        """Where hub files land first: inside ``out`` when local (so a rename places them, and
        a rerun resumes a partial download), else a directory of this machine's temp space."""
        if not storage.is_gcs(self.out):
            return os.path.join(self.out, STAGING_NAME)
        tag = hashlib.sha1(self.out.encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), f"asrflow-download-{tag}")

    def copy(self, file: SourceFile) -> None:
        target = target_uri(self.out, file)
        storage.delete(target)  # a leftover that failed the check; uploads are create-only
        if self.plan.kind == HUB:
            self._from_hub(file, target)
        elif storage.is_gcs(target) and storage.is_gcs(file.uri):
            self._rewrite(file, target)
        elif storage.is_gcs(target):
            storage.upload_file(file.uri, target)
            self.transfer.add_bytes(file.size)
            self._check_placed(file, target)
        else:
            self._stream(file, target)
        if self.plan.format == PARQUET:
            check_schema(target, self.columns)  # fail on the first file, not after the last
        self.transfer.file_done()

    def _stream(self, file: SourceFile, target: str) -> None:
        digest = new_hash(file.algorithm, file.size)
        size = 0
        with storage.open_read(file.uri) as src, storage.atomic_writer(target) as dst:
            for chunk in iter(lambda: src.read(storage.CHUNK_BYTES), b""):
                dst.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                self.transfer.add_bytes(len(chunk))
            if size != file.size or digest.hexdigest() != file.digest:
                raise DownloadError(
                    f"{file.uri}: read {size} bytes with {file.algorithm} {digest.hexdigest()}, "
                    f"expected {file.size} bytes with {file.digest}; the source changed while copying?"
                )

    def _rewrite(self, file: SourceFile, target: str) -> None:
        client = storage.gcs_client()
        src_bucket, src_name = storage.split_gcs(file.uri)
        dst_bucket, dst_name = storage.split_gcs(target)
        source_blob = client.bucket(src_bucket).blob(src_name)
        blob = client.bucket(dst_bucket).blob(dst_name)
        token, _, _ = blob.rewrite(source_blob, if_generation_match=0)
        while token is not None:
            token, _, _ = blob.rewrite(source_blob, token=token, if_generation_match=0)
        self.transfer.add_bytes(file.size)
        self._check_placed(file, target)

    def _from_hub(self, file: SourceFile, target: str) -> None:
        assert self.plan.repo_id is not None
        staged = fetch_hub_file(self.plan.repo_id, self.plan.revision, file, self.staging(), self.token)
        self.transfer.add_bytes(file.size)
        if storage.is_gcs(target):
            storage.upload_file(staged, target)
            os.unlink(staged)
            record_checksum(target, file)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staged, target)

    def _check_placed(self, file: SourceFile, target: str) -> None:
        if not is_complete_copy(target, file):
            storage.delete(target)
            raise DownloadError(f"{target}: the copy of {file.uri} fails its size or {file.algorithm} check")

"""Checking copies against the checksum their source gives: MD5, CRC32C, SHA-256 or git's blob hash."""

from __future__ import annotations

import hashlib
from typing import Any

from components import storage
from components.download.files import SourceFile

CHECKSUM_METADATA = "asrflow-source-"
"""Prefix of the GCS object metadata key that records a source checksum GCS cannot check."""


class _Crc32c:
    """google-crc32c's running checksum with ``hashlib``'s ``update``/``hexdigest``."""

    def __init__(self) -> None:
        import google_crc32c

        self._checksum = google_crc32c.Checksum()

    def update(self, data: bytes) -> None:
        self._checksum.update(data)

    def hexdigest(self) -> str:
        return self._checksum.digest().hex()


def new_hash(algorithm: str, size: int) -> Any:
    """A running hash for a source checksum algorithm (``update``, ``hexdigest``).

    Ours: one interface for the four checksums, fed chunk by chunk while a file streams
    (huggingface_hub's ``git_hash`` wants the whole file in memory).
    """
    if algorithm == "md5":
        return hashlib.md5()
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm == "git-sha1":
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % size)
        return digest
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def hash_uri(uri: str, algorithm: str, size: int) -> str:
    """Hash a file by streaming it (never whole in memory)."""
    digest = new_hash(algorithm, size)
    with storage.open_read(uri) as stream:
        for chunk in iter(lambda: stream.read(storage.CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gcs_metadata(uri: str) -> dict[str, str]:
    """The custom metadata of a GCS object ({} when it has none or does not exist)."""
    bucket, name = storage.split_gcs(uri)
    blob = storage.gcs_client().bucket(bucket).get_blob(name)
    return dict(blob.metadata or {}) if blob is not None else {}


def record_checksum(uri: str, file: SourceFile) -> None:
    """Note the source checksum on a GCS object that GCS cannot check itself (SHA-256, git),
    so a rerun verifies it without reading the object back. GCS checked the upload's CRC32C
    against the local file, and the local file was checked against this checksum."""
    bucket, name = storage.split_gcs(uri)
    blob = storage.gcs_client().bucket(bucket).blob(name)
    blob.metadata = {CHECKSUM_METADATA + file.algorithm: file.digest}
    blob.patch()


def is_complete_copy(uri: str, file: SourceFile) -> bool:
    """True when ``uri`` holds exactly ``file``: same size and same checksum.

    Uses the checksums GCS keeps (MD5, CRC32C) or one recorded by :func:`record_checksum`
    where they fit; otherwise reads the file and hashes it.
    """
    info = storage.stat(uri)
    if info is None or info.size != file.size:
        return False
    if file.algorithm == "md5" and info.md5 is not None:
        return info.md5 == file.digest
    if file.algorithm == "crc32c" and info.crc32c is not None:
        return info.crc32c == file.digest
    if storage.is_gcs(uri):
        recorded = gcs_metadata(uri).get(CHECKSUM_METADATA + file.algorithm)
        if recorded is not None:
            return recorded == file.digest
    return hash_uri(uri, file.algorithm, file.size) == file.digest

"""What a download copies: the planned files with their checksums, and the plan."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable
from typing import Any

from components import storage
from components.download.card import MANIFEST

HUB = "hub"
GCS = "gcs"
LOCAL = "local"
KINDS = (HUB, GCS, LOCAL, MANIFEST)
"""The kinds of source (:attr:`Plan.kind`); a manifest source's kind is its format's name."""


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file to copy.

    Attributes:
        path: its path relative to the dataset root ('/'-separated), and so below ``out``.
        uri: where to read it: a local path or gs:// URI; for the hub, its path in the repo.
        size: its size in bytes.
        algorithm: the checksum the source gives: md5, crc32c, sha256 or git-sha1.
        digest: that checksum, as hex.
    """

    path: str
    uri: str
    size: int
    algorithm: str
    digest: str

    @classmethod
    def from_listing(cls, path: str, info: storage.FileInfo) -> SourceFile:
        """A listed local or gs:// file with the checksum GCS keeps (MD5, else CRC32C), or the
        MD5 of a local file's bytes."""
        if info.md5 is not None:
            return cls(path, info.uri, info.size, "md5", info.md5)
        if info.crc32c is not None:
            return cls(path, info.uri, info.size, "crc32c", info.crc32c)
        return cls(path, info.uri, info.size, "md5", storage.file_md5(info.uri))


@dataclasses.dataclass
class Plan:
    """What a download copies and how the result is named; made before anything is copied.

    Attributes:
        source: the source as given (local paths made absolute).
        kind: one of :data:`KINDS` (see :func:`components.download.plan.source_kind`).
        dataset: the dataset's name in the card and key.
        config: the dataset config.
        split: the split.
        revision: the hub commit SHA, or the content hash of any other source.
        format: parquet or manifest (:data:`components.download.card.FORMATS`).
        files: the files to copy.
        repo_id: the hub repo (hub sources only).
        entries: a manifest source's entries, audio paths relative to the output directory.
    """

    source: str
    kind: str
    dataset: str
    config: str
    split: str
    revision: str
    format: str
    files: list[SourceFile]
    repo_id: str | None = None
    entries: list[dict[str, Any]] | None = None

    @property
    def bytes(self) -> int:
        """The bytes of all planned files."""
        return sum(file.size for file in self.files)


def content_revision(files: Iterable[SourceFile]) -> str:
    """A 40-hex revision for a local or gs:// source: a hash of the names, sizes and checksums."""
    digest = hashlib.sha1()
    for file in sorted(files, key=lambda f: f.path):
        digest.update(f"{file.path}\t{file.size}\t{file.algorithm}:{file.digest}\n".encode())
    return digest.hexdigest()

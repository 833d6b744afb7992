"""What a download is asked for and what it copies: the request, the planned files with their
checksums, and the plan."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable
from typing import Any

from components import storage
from components.download.card import MANIFEST
from components.download.data_files import DEFAULT_SPLIT
from components.download.errors import DownloadError

HUB = "hub"
GCS = "gcs"
LOCAL = "local"
KINDS = (HUB, GCS, LOCAL, MANIFEST)
"""The kinds of source (:attr:`Plan.kind`); a manifest source's kind is its format's name."""
DEFAULT_WORKERS = 8
"""Files listed, checksummed and copied at once when the caller does not say."""
UNSET_WHEN_EMPTY = ("config", "revision", "pattern", "dataset")
"""The request's fields whose empty value means "not given": the KFP components pass ``""``."""


@dataclasses.dataclass(frozen=True)
class DownloadRequest:
    """What to download: a source, and which config, split and revision of it; checked when made.

    The one declaration of these parameters: the planners (:mod:`components.download.plan`),
    ``download`` and ``resolve_revision`` (:mod:`components.download.core`) take a request; the
    click options and the KFP components' parameters build one. An empty ``config``,
    ``revision``, ``pattern`` or ``dataset`` becomes None.

    Attributes:
        source: ``hf://datasets/OWNER/NAME[@REVISION]``, a local directory or ``gs://`` prefix
            with the hub's parquet layout, or a NeMo manifest (``.json``/``.jsonl``).
        config: the dataset config (e.g. ``clean``); None: the only one, or the dataset card's
            default.
        split: the split (``train``, ``validation``, ``test``).
        revision: hub branch, tag or commit; for any other source the content hash it must
            have. None: the hub's main, or whatever the source holds.
        pattern: a glob of the data files relative to the source root (``{config}`` and
            ``{split}`` filled in), instead of the dataset card's; None: the card's.
        dataset: the dataset's name in the card and key; None: from the source.
        workers: files listed, checksummed and copied at once; at least 1.
        token: the hub token; None: ``HF_TOKEN`` (:attr:`hub_token`). Never logged, so not in
            the repr.

    Raises:
        DownloadError: ``workers`` is below 1.
    """

    source: str
    config: str | None = None
    split: str = DEFAULT_SPLIT
    revision: str | None = None
    pattern: str | None = None
    dataset: str | None = None
    workers: int = DEFAULT_WORKERS
    token: str | None = dataclasses.field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in UNSET_WHEN_EMPTY:
            object.__setattr__(self, name, getattr(self, name) or None)
        if self.workers < 1:
            raise DownloadError(f"--workers must be at least 1, not {self.workers}")

    @classmethod
    def of(cls, request: DownloadRequest | str, **fields: Any) -> DownloadRequest:
        """``request`` with ``fields`` changed, or, given a source, the request for it with ``fields``.

        This keeps ``download(source, config=..., split=...)`` a valid call of the functions
        that take a request.
        """
        if isinstance(request, cls):
            return dataclasses.replace(request, **fields) if fields else request
        return cls(request, **fields)

    @property
    def hub_token(self) -> str | None:
        """:attr:`token`, else ``HF_TOKEN`` when it is set and not empty, else None."""
        if self.token is not None:
            return self.token
        return os.environ.get("HF_TOKEN") or None


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

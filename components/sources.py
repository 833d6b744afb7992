"""Reading utterances from a dataset, streaming: parquet files, a download, or a manifest.

An INPUT is one of

* a directory (local or ``gs://``) of parquet files with People's Speech's schema: ``id``
  string, ``audio`` struct {``bytes``, ``path``}, ``duration_ms`` int32, ``text`` string;
* a download (``card.json`` written by ``asrflow download``, or the directory holding it): its
  :class:`~components.download.card.DownloadCard` says which files, in which format, with
  which columns;
* a NeMo manifest (JSON lines with ``audio_filepath``, ``text`` and optionally ``duration``,
  ``offset`` and ``id``); relative audio paths resolve against the manifest's directory.

:func:`open_source` resolves an INPUT to a :class:`Source`; :func:`iter_items` streams its
utterances as :class:`~components.items.Item` s (or :class:`~components.items.Bad` s, with a
named reason) through :mod:`components.parquet_items` and :mod:`components.manifest_items`.
:mod:`components.groups` cuts a Source's files into groups for parallel work, and
:mod:`components.export` writes one as an evaluation manifest.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import re
from collections.abc import Iterator, Sequence
from typing import Any

from components import storage
from components.cards import CardError
from components.columns import Columns
from components.download.card import FORMATS, MANIFEST, PARQUET, DownloadCard
from components.groups import Part
from components.items import Bad, Item, SourceError
from components.layout import CARD_NAME
from components.manifest_items import manifest_batches
from components.parquet_items import parquet_batches, parquet_rows

BATCH_ROWS = 64
MANIFEST_SUFFIXES = (".json", ".jsonl", ".manifest")
_HUB_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-\d{5}-of-\d{5}\.parquet$")


@dataclasses.dataclass(frozen=True)
class Source:
    """A resolved INPUT: what it is and which files it consists of (sorted by URI).

    Attributes:
        uri: the INPUT as given (local paths made absolute).
        format: parquet or manifest.
        files: the data files, sorted by URI.
        columns: the parquet column mapping.
        root: the directory the files are named relative to in :meth:`fingerprint`.
        revision: the content hash a download card records for its files, if any.
    """

    uri: str
    format: str
    files: tuple[storage.FileInfo, ...]
    columns: Columns = Columns()
    root: str = ""
    revision: str | None = None

    def relative(self, uri: str) -> str:
        """A file's name relative to :attr:`root` (its full URI when outside it)."""
        prefix = self.root.rstrip("/") + "/"
        return uri[len(prefix) :] if self.root and uri.startswith(prefix) else uri

    def fingerprint(self) -> list[Any]:
        """A JSON-able description of the content, which changes when the input's files change
        and not with how the INPUT is spelled (``dir``, ``./dir``, ``/abs/dir``, a copy elsewhere):
        file names relative to the root, sizes, and the checksums that come cheaply (GCS's MD5
        or CRC32C, the MD5 of a local manifest, a download card's content revision)."""
        files = [[self.relative(f.uri), f.size, f.md5 or f.crc32c] for f in self.files]
        return [self.format, dataclasses.asdict(self.columns), files, self.revision]


# --- resolving an INPUT -------------------------------------------------------------------


def open_source(input_: str, split: str | None = None) -> Source:
    """Resolve an INPUT (directory, ``card.json`` or its directory, or manifest).

    Args:
        input_: the INPUT URI.
        split: keep only this split's parquet files (``train-00000-of-00004.parquet`` or a
            ``train/`` directory); needed when a directory holds several splits.

    Raises:
        SourceError: the INPUT does not exist, holds nothing readable, or mixes splits.
    """
    uri = input_.rstrip("/") if input_ != "/" else input_
    if not storage.is_gcs(uri):
        uri = os.path.abspath(uri)
    name = storage.basename(uri)
    if name == CARD_NAME:
        return _from_card(_typed_card(_read_json(uri), uri), base=storage.parent(uri), uri=uri, split=split)
    if name.endswith(MANIFEST_SUFFIXES):
        info = storage.stat(uri)
        if info is None:
            raise SourceError(f"{uri}: no such manifest")
        return Source(uri, MANIFEST, (_with_checksum(info),), root=storage.parent(uri))
    card_uri = storage.join(uri, CARD_NAME)
    if storage.exists(card_uri):
        card = _read_json(card_uri)
        if card.get("step") == DownloadCard.STEP:  # a directory of another step's is read as files
            return _from_card(_typed_card(card, card_uri), base=uri, uri=card_uri, split=split)
    try:
        files = storage.list_files(uri, suffix=".parquet")
    except FileNotFoundError:
        raise SourceError(f"{uri}: no such directory, manifest or card") from None
    files = _select_split(uri, files, split)
    if not files:
        raise SourceError(f"{uri}: no parquet files{f' for split {split!r}' if split else ''}")
    return Source(uri, PARQUET, tuple(files), root=uri)


def _with_checksum(info: storage.FileInfo) -> storage.FileInfo:
    """A manifest's listing with an MD5 (GCS keeps one; a local manifest is hashed: it is small
    beside its audio), so that its fingerprint changes with any edit."""
    if info.md5 or info.crc32c or storage.is_gcs(info.uri):
        return info
    return dataclasses.replace(info, md5=storage.file_md5(info.uri))


def _read_json(uri: str) -> dict[str, Any]:
    try:
        value = json.loads(storage.read_text(uri))
    except FileNotFoundError:
        raise SourceError(f"{uri}: no such card") from None
    except json.JSONDecodeError as err:
        raise SourceError(f"{uri}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(value, dict):
        raise SourceError(f"{uri}: expected a JSON object")
    return value


def _typed_card(data: dict[str, Any], uri: str) -> DownloadCard:
    try:
        return DownloadCard.from_dict(data, where=uri)
    except CardError as err:
        raise SourceError(str(err)) from None


def _from_card(card: DownloadCard, base: str, uri: str, split: str | None) -> Source:
    """The Source a download holds; its files are named relative to ``base``, the card's directory."""
    if card.format not in FORMATS:
        raise SourceError(f"{uri}: format {card.format!r} is not one of {', '.join(FORMATS)}")
    if not isinstance(card.files, list) or not card.files:
        raise SourceError(f"{uri}: the card lists no files")
    files = []
    for name in card.files:
        if not isinstance(name, str):
            raise SourceError(f"{uri}: a files entry is not a path: {name!r}")
        if not (storage.is_gcs(name) or name.startswith("/")):
            name = storage.join(base, name)
        info = storage.stat(name)
        if info is None:
            raise SourceError(f"{uri}: listed file {name} does not exist")
        files.append(_with_checksum(info) if card.format == MANIFEST else info)
    files.sort(key=lambda info: info.uri)
    if card.format == PARQUET:
        files = _select_split(uri, files, split)
    revision = card.revision if isinstance(card.revision, str) else None
    return Source(uri, card.format, tuple(files), _card_columns(card, uri), root=base, revision=revision)


def _card_columns(card: DownloadCard, uri: str) -> Columns:
    """The card's column mapping; the audio and text columns must be named."""
    if card.columns is not None and not isinstance(card.columns, dict):
        raise SourceError(f"{uri}: columns must be an object, got {card.columns!r}")
    try:
        columns = card.parquet_columns()
    except ValueError as err:
        raise SourceError(f"{uri}: {err}") from None
    if not columns.audio or not columns.text:
        raise SourceError(f"{uri}: the audio and text columns must be named, got {card.columns!r}")
    return columns


def _select_split(uri: str, files: list[storage.FileInfo], split: str | None) -> list[storage.FileInfo]:
    def split_of(info: storage.FileInfo) -> str | None:
        match = _HUB_FILE.match(storage.basename(info.uri))
        return match.group("split") if match else None

    if split:
        return [
            info
            for info in files
            if split_of(info) == split or split in info.uri[len(uri) :].strip("/").split("/")[:-1]
        ]
    found = sorted({s for s in map(split_of, files) if s})
    if len(found) > 1:
        raise SourceError(f"{uri}: holds the splits {', '.join(found)}; choose one with --split")
    return files


# --- reading ------------------------------------------------------------------------------


def count_rows(source: Source, files: Sequence[storage.FileInfo | Part] | None = None) -> int | None:
    """Rows in parquet files from their footers (cheap); None for manifests."""
    if source.format != PARQUET:
        return None
    return sum(parquet_rows(info.uri) for info in (source.files if files is None else files))


def iter_items(
    source: Source,
    files: Sequence[storage.FileInfo | Part] | None = None,
    interleave: int = 1,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Item | Bad]:
    """Every utterance of ``files`` (default: all of the source's), streaming.

    Args:
        source: from :func:`open_source`.
        files: a subset of ``source.files``, or the :class:`~components.groups.Part` s of a group.
        interleave: read this many files at once, one item from each in turn, so that
            consecutive items come from different source files. The order is fixed.
        batch_rows: rows per parquet record batch.

    Raises:
        SourceError: a parquet file lacks a required column or has the wrong type.
    """
    parts = [f if isinstance(f, Part) else Part(f) for f in (source.files if files is None else files)]
    readers: list[Iterator[list[Any]]]
    if source.format == MANIFEST:
        readers = [manifest_batches(part.uri, batch_rows, part.stride, part.offset) for part in parts]
    else:
        if any(part.stride != 1 for part in parts):
            raise ValueError("parquet files are read whole: a Part of one must have stride 1")
        readers = [parquet_batches(part.uri, source.columns, batch_rows) for part in parts]
    yield from _round_robin(readers, max(1, interleave))


def _round_robin(readers: list[Iterator[list[Any]]], width: int) -> Iterator[Any]:
    """One item from each of ``width`` open readers in turn; the next reader opens when one ends.

    Readers yield batches; only the current batch of each open reader is held in memory.
    """
    waiting = collections.deque(readers)
    active: collections.deque[tuple[Iterator[Any], Iterator[list[Any]]]] = collections.deque()
    while waiting or active:
        while waiting and len(active) < width:
            reader = waiting.popleft()
            active.append((iter(()), reader))
        batch, reader = active.popleft()
        item = next(batch, _END)
        if item is _END:
            new_batch = next(reader, None)
            if new_batch is None:
                continue  # this reader is done: the next waiting one takes its place
            batch = iter(new_batch)
            item = next(batch, _END)
            if item is _END:
                active.append((batch, reader))
                continue
        yield item
        active.append((batch, reader))


_END = object()


# --- names that moved out of this module (issue 13) ---------------------------------------

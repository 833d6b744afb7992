"""Reading utterances from a dataset, streaming: parquet files, a download card, or a manifest.

An INPUT is one of

* a directory (local or ``gs://``) of parquet files with People's Speech's schema: ``id``
  string, ``audio`` struct {``bytes``, ``path``}, ``duration_ms`` int32, ``text`` string
  (other column names through :class:`Columns`);
* a download card (``card.json`` written by ``asrflow download``, or the directory holding
  it): its ``files``, ``format`` and column mapping say what to read;
* a NeMo manifest (JSON lines with ``audio_filepath``, ``text`` and optionally ``duration``,
  ``offset`` and ``id``); relative audio paths resolve against the manifest's directory.

Parquet files are read one record batch at a time and only the columns needed, so memory
does not grow with the dataset. Every row becomes an :class:`Item` or, when it cannot be
used at all (a malformed manifest line, a missing audio file), a :class:`Bad` with a named
reason; a file that lacks a required column is a :class:`SourceError` naming the file and
column. :func:`export_manifest` turns an INPUT into audio files plus a NeMo manifest (what
evaluation reads); :func:`split_groups` cuts parquet files into groups for parallel work and
:func:`deal_manifests` deals a manifest's lines out to groups.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import heapq
import json
import logging
import os
import re
import time
import types
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from components import audio as checks
from components import storage
from components.manifest import Rejects, manifest_line

log = logging.getLogger("asrflow.sources")

PARQUET = "parquet"
MANIFEST = "manifest"
FORMATS = (PARQUET, MANIFEST)
BATCH_ROWS = 64
DURATION_COLUMNS = ("duration_ms", "duration")
PARQUET_BUFFER_BYTES = 4 * 1024 * 1024
MANIFEST_SUFFIXES = (".json", ".jsonl", ".manifest")
_HUB_FILE = re.compile(r"^(?P<split>[A-Za-z0-9_.]+)-\d{5}-of-\d{5}\.parquet$")
_AUDIO_SUFFIX = re.compile(r"\.(flac|wav|mp3|ogg|opus)$", re.IGNORECASE)
_NOT_MEMBER_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_MEMBER_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED_STEM = re.compile(r"-[0-9a-f]{16}\Z")
MAX_MEMBER_STEM = 95
"""So that ``<stem>.<ext>`` (an extension of up to 4 letters) fits the 100 bytes of a plain tar
header: one 512-byte block a member, no PAX extension."""
_SURROGATES = re.compile("[\ud800-\udfff]")


class SourceError(ValueError):
    """An INPUT that cannot be read as a whole; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which parquet columns hold what (People's Speech's names by default).

    Attributes:
        id: the utterance id column; None makes ids from the file name and row.
        audio: a struct column with a ``bytes`` field (the hub's Audio feature) or a binary column.
        text: the transcript column (string or binary).
        duration: a duration column; None or "": ``duration_ms`` or ``duration`` when the
            file has one (the duration is measured from the audio anyway, and checked
            against this one).
        duration_unit: "ms" or "s"; None: milliseconds when the column name ends with ``_ms``.
    """

    id: str | None = "id"
    audio: str = "audio"
    text: str = "text"
    duration: str | None = None
    duration_unit: str | None = None

    def resolve(self, names: Sequence[str]) -> Columns:
        """These columns for a file with columns ``names``: the duration column picked."""
        if self.duration:
            return self
        found = next((name for name in DURATION_COLUMNS if name in names), None)
        return dataclasses.replace(self, duration=found)

    def needed(self) -> list[str]:
        return [name for name in (self.id, self.audio, self.text, self.duration) if name]

    def duration_scale(self) -> float:
        unit = self.duration_unit or ("ms" if (self.duration or "").endswith("_ms") else "s")
        if unit not in ("ms", "s"):
            raise SourceError(f"duration unit must be ms or s, got {unit!r}")
        return 0.001 if unit == "ms" else 1.0


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


_NO_EXTRA: Mapping[str, Any] = types.MappingProxyType({})


class Item(NamedTuple):
    """One utterance as read: nothing validated yet (a tuple: millions are made).

    Attributes:
        id: the dataset's id for it.
        source: where it came from, ``<file>:row <n>`` or ``<manifest>:line <n>``.
        audio: the encoded audio bytes (None when the dataset has none).
        text: the transcript as stored: str, or bytes when the column is binary.
        duration: the duration the dataset declares, in seconds, if any.
        extra: other manifest keys, kept as they are.
    """

    id: str
    source: str
    audio: bytes | None
    text: str | bytes | None
    duration: float | None = None
    extra: Mapping[str, Any] = _NO_EXTRA


@dataclasses.dataclass(frozen=True)
class Bad:
    """A row or line that cannot be used, with the reject reason and what was wrong."""

    id: str
    source: str
    reason: str
    detail: str = ""


# --- resolving an INPUT -------------------------------------------------------------------


def open_source(input_: str | Mapping[str, Any], split: str | None = None) -> Source:
    """Resolve an INPUT (directory, ``card.json`` or its directory, manifest, or card dict).

    Args:
        input_: the INPUT URI, or a download card already loaded as a dict.
        split: keep only this split's parquet files (``train-00000-of-00004.parquet`` or a
            ``train/`` directory); needed when a directory holds several splits.

    Raises:
        SourceError: the INPUT does not exist, holds nothing readable, or mixes splits.
    """
    if isinstance(input_, Mapping):
        return _from_card(dict(input_), base=_card_base(input_, None), uri="<card>", split=split)
    uri = input_.rstrip("/") if input_ != "/" else input_
    if not storage.is_gcs(uri):
        uri = os.path.abspath(uri)
    name = storage.basename(uri)
    if name == "card.json":
        return _from_card(_read_json(uri), base=storage.parent(uri), uri=uri, split=split)
    if name.endswith(MANIFEST_SUFFIXES):
        info = storage.stat(uri)
        if info is None:
            raise SourceError(f"{uri}: no such manifest")
        return Source(uri, MANIFEST, (_with_checksum(info),), root=storage.parent(uri))
    card_uri = storage.join(uri, "card.json")
    if storage.exists(card_uri):
        card = _read_json(card_uri)
        if "files" in card:
            return _from_card(card, base=uri, uri=card_uri, split=split)
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


def _card_base(card: Mapping[str, Any], card_dir: str | None) -> str | None:
    for key in ("root", "out_dir", "out"):
        if isinstance(card.get(key), str) and card[key]:
            base = str(card[key])
            return base if storage.is_gcs(base) else os.path.abspath(base)
    return card_dir


def _from_card(card: dict[str, Any], base: str | None, uri: str, split: str | None) -> Source:
    fmt = card.get("format", PARQUET)
    if fmt not in FORMATS:
        raise SourceError(f"{uri}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    names = card.get("files")
    if not isinstance(names, list) or not names:
        raise SourceError(f"{uri}: the card lists no files")
    files = []
    for entry in names:
        name = entry.get("path") or entry.get("name") if isinstance(entry, Mapping) else entry
        if not isinstance(name, str):
            raise SourceError(f"{uri}: a files entry has no path: {entry!r}")
        if not (storage.is_gcs(name) or name.startswith("/")):
            if base is None:
                raise SourceError(f"{uri}: relative file {name!r} but the card names no root")
            name = storage.join(base, name)
        info = storage.stat(name)
        if info is None:
            raise SourceError(f"{uri}: listed file {name} does not exist")
        files.append(_with_checksum(info) if fmt == MANIFEST else info)
    files.sort(key=lambda info: info.uri)
    if fmt == PARQUET:
        files = _select_split(uri, files, split)
    revision = card.get("revision") if isinstance(card.get("revision"), str) else None
    return Source(uri, fmt, tuple(files), _columns_from_card(card), root=base or "", revision=revision)


def _columns_from_card(card: Mapping[str, Any]) -> Columns:
    """Column names from a card: ``columns: {id, audio, text, duration}`` or ``<role>_column`` keys."""
    mapping = card.get("columns") or {}
    if not isinstance(mapping, Mapping):
        raise SourceError(f"card: columns must be an object, got {mapping!r}")
    defaults = dataclasses.asdict(Columns())
    chosen = {"duration_unit": card.get("duration_unit")}
    for role, default in defaults.items():
        if role == "duration_unit":
            continue
        if role in mapping:
            chosen[role] = mapping[role]
        elif f"{role}_column" in card:
            chosen[role] = card[f"{role}_column"]
        else:
            chosen[role] = default
    if not chosen["audio"] or not chosen["text"]:
        raise SourceError(f"card: the audio and text columns must be named, got {mapping!r}")
    return Columns(**chosen)


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


# --- grouping -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Part:
    """What one group reads of one input file: all of it, or (a manifest) every ``stride``-th
    item from the ``offset``-th on, counting non-blank lines from 0."""

    info: storage.FileInfo
    stride: int = 1
    offset: int = 0

    @property
    def uri(self) -> str:
        return self.info.uri

    def describe(self) -> str:
        if self.stride == 1:
            return self.info.uri
        return f"{self.info.uri} (item {self.offset} and every {self.stride}th after it)"


def deal_manifests(files: Sequence[storage.FileInfo], num_groups: int) -> list[list[Part]]:
    """Deal manifest lines to ``num_groups`` groups like cards: group g reads items g, g+G,
    g+2G, ... of every manifest (non-blank lines, counted from 0).

    Every group then holds a sample of the whole manifest (a manifest sorted by speaker or
    duration still makes mixed shards), the groups get equal shares, and the cut depends only
    on the bytes and G: never on how many workers write them.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    ordered = sorted(files, key=lambda f: f.uri)
    return [[Part(info, num_groups, index) for info in ordered] for index in range(num_groups)]


def split_groups(files: Sequence[storage.FileInfo], num_groups: int) -> list[list[storage.FileInfo]]:
    """Cut files into at most ``num_groups`` groups of about equal bytes, deterministically.

    Largest file first to the lightest group (ties: the lower group index); each group's
    files are then in URI order. The same files and count always give the same groups.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    count = min(num_groups, len(files))
    groups: list[list[storage.FileInfo]] = [[] for _ in range(count)]
    heap = [(0, index) for index in range(count)]
    for info in sorted(files, key=lambda f: (-f.size, f.uri)):
        load, index = heapq.heappop(heap)
        groups[index].append(info)
        heapq.heappush(heap, (load + info.size, index))
    return [sorted(group, key=lambda f: f.uri) for group in groups]


# --- reading ------------------------------------------------------------------------------


def member_stem(item_id: str) -> str:
    """A file-name stem for an id: safe in tars and for NeMo (letters, digits, '_' and '-' only:
    no '/' and no '.'), at most :data:`MAX_MEMBER_STEM` long, and distinct for distinct ids.

    An id that already is such a stem is its own stem. Any other id (``a.b``, ``x/y.flac``,
    one too long) becomes a readable form (audio suffix dropped, other characters as '_')
    plus '-' and 16 hex digits of a hash of the id, so ``a.b`` and ``a_b`` stay apart. Only
    these end in '-' and 16 hex digits: an id that does is treated as one to escape too.
    """
    if (
        len(item_id) <= MAX_MEMBER_STEM
        and _MEMBER_SAFE.fullmatch(item_id)
        and not _ESCAPED_STEM.search(item_id)
    ):
        return item_id
    readable = _NOT_MEMBER_SAFE.sub("_", _AUDIO_SUFFIX.sub("", item_id)) or "_"
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{readable[: MAX_MEMBER_STEM - 17]}-{digest}"


def count_rows(source: Source, files: Sequence[storage.FileInfo | Part] | None = None) -> int | None:
    """Rows in parquet files from their footers (cheap); None for manifests."""
    if source.format != PARQUET:
        return None
    total = 0
    for info in source.files if files is None else files:
        with _parquet_file(info.uri) as parquet:
            total += parquet.metadata.num_rows
    return total


def iter_items(
    source: Source,
    files: Sequence[storage.FileInfo | Part] | None = None,
    interleave: int = 1,
    batch_rows: int = BATCH_ROWS,
) -> Iterator[Item | Bad]:
    """Every utterance of ``files`` (default: all of the source's), streaming.

    Args:
        source: from :func:`open_source`.
        files: a subset of ``source.files``, or the :class:`Part` s of a group.
        interleave: read this many files at once, one item from each in turn, so that
            consecutive items come from different source files. The order is fixed.
        batch_rows: rows per parquet record batch.

    Raises:
        SourceError: a parquet file lacks a required column or has the wrong type.
    """
    parts = [f if isinstance(f, Part) else Part(f) for f in (source.files if files is None else files)]
    if source.format == MANIFEST:
        readers = [_manifest_batches(part.uri, batch_rows, part.stride, part.offset) for part in parts]
    else:
        if any(part.stride != 1 for part in parts):
            raise ValueError("parquet files are read whole: a Part of one must have stride 1")
        readers = [_parquet_batches(part.uri, source.columns, batch_rows) for part in parts]
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


@contextlib.contextmanager
def _parquet_file(uri: str) -> Iterator[Any]:
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        # buffer_size reads column chunks through a bounded buffer, not in one piece
        source = stack.enter_context(storage.open_read(uri)) if storage.is_gcs(uri) else uri
        parquet = pq.ParquetFile(source, buffer_size=PARQUET_BUFFER_BYTES)
        stack.callback(parquet.close)
        yield parquet


def _parquet_batches(uri: str, columns: Columns, batch_rows: int) -> Iterator[list[Item]]:
    import pyarrow as pa
    import pyarrow.compute as pc

    with _parquet_file(uri) as parquet:
        schema = parquet.schema_arrow
        columns = columns.resolve(schema.names)
        missing = [name for name in columns.needed() if name not in schema.names]
        if missing:
            raise SourceError(
                f"{uri}: no column {', '.join(map(repr, missing))} "
                f"(it has {', '.join(schema.names)}; map columns in the download card)"
            )
        audio_type = schema.field(columns.audio).type
        audio_is_struct = pa.types.is_struct(audio_type)
        if audio_is_struct and audio_type.get_field_index("bytes") < 0:
            raise SourceError(f"{uri}: column {columns.audio!r} is a struct without a 'bytes' field")
        is_binary = pa.types.is_binary(audio_type) or pa.types.is_large_binary(audio_type)
        if not audio_is_struct and not is_binary:
            raise SourceError(f"{uri}: column {columns.audio!r} has type {audio_type}, not audio bytes")
        scale = columns.duration_scale()
        stem = storage.basename(uri).rsplit(".", 1)[0]
        # only the bytes of an Audio struct: its path field is never read
        wanted = [
            f"{name}.bytes" if name == columns.audio and audio_is_struct else name
            for name in columns.needed()
        ]
        row = 0
        for batch in _record_batches(parquet, batch_rows, wanted):
            audio_col = batch.column(columns.audio)
            if audio_is_struct:
                audio_col = pc.struct_field(audio_col, "bytes")
            audios = audio_col.to_pylist()
            texts = _as_binary(batch.column(columns.text)).to_pylist()
            ids = (
                [None if v is None else str(v) for v in batch.column(columns.id).to_pylist()]
                if columns.id
                else [None] * batch.num_rows
            )
            durations = batch.column(columns.duration).to_pylist() if columns.duration else None
            if durations is None:
                durations = [None] * batch.num_rows
            yield [
                Item(
                    item_id or f"{stem}-{row + i:08d}",
                    f"{uri}:row {row + i}",
                    audio,
                    text,
                    None if declared is None else declared * scale,
                )
                for i, (item_id, audio, text, declared) in enumerate(
                    zip(ids, audios, texts, durations, strict=True)
                )
            ]
            row += batch.num_rows


def _record_batches(parquet: Any, batch_rows: int, columns: list[str]) -> Iterator[Any]:
    """Record batches one row group at a time: Arrow decodes a whole row group before it
    slices batches, and given all row groups at once it reads ahead; this way a file holds
    at most one row group in memory (the hub writes audio datasets in 100-row groups)."""
    for row_group in range(parquet.num_row_groups):
        yield from parquet.iter_batches(
            batch_size=batch_rows, row_groups=[row_group], columns=columns, use_threads=False
        )


def _as_binary(column: Any) -> Any:
    """Strings as raw bytes, without Arrow's UTF-8 check, so that bad text is a reject per row."""
    import pyarrow as pa

    if pa.types.is_string(column.type):
        return column.cast(pa.binary())
    if pa.types.is_large_string(column.type):
        return column.cast(pa.large_binary())
    return column


_MANIFEST_RESERVED = ("audio_filepath", "duration", "text", "offset", "id", "shard_id")


def _manifest_batches(
    uri: str, batch_rows: int, stride: int = 1, offset: int = 0
) -> Iterator[list[Item | Bad]]:
    """Items ``offset``, ``offset + stride``, ... of a manifest (non-blank lines from 0)."""
    base = storage.parent(uri)
    batch: list[Item | Bad] = []
    index = -1
    with storage.open_read(uri) as stream:
        for line_number, raw in enumerate(stream, start=1):
            if not raw.strip():
                continue
            index += 1
            if stride != 1 and index % stride != offset:
                continue
            batch.append(_manifest_item(raw, f"{uri}:line {line_number}", base))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def _manifest_item(raw: bytes, where: str, base: str) -> Item | Bad:
    # surrogateescape keeps undecodable bytes as lone surrogates; in the text field they make
    # a text_not_utf8 reject, elsewhere a malformed line
    line = raw.decode("utf-8", "surrogateescape")
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        return Bad("", where, checks.MANIFEST_MALFORMED, f"not valid JSON ({err.msg} at column {err.colno})")
    if not isinstance(entry, dict):
        return Bad("", where, checks.MANIFEST_MALFORMED, f"not a JSON object but {type(entry).__name__}")
    path = entry.get("audio_filepath")
    if not isinstance(path, str) or not path or _has_surrogates(path):
        return Bad("", where, checks.MANIFEST_MALFORMED, "field audio_filepath must be a non-empty string")
    item_id = entry.get("id")
    if not isinstance(item_id, str) or not item_id:
        item_id = _AUDIO_SUFFIX.sub("", path)
    offset = entry.get("offset", 0.0)
    duration = entry.get("duration")
    for key, value in (("duration", duration), ("offset", offset)):
        if value is not None and not _is_seconds(value):
            return Bad(item_id, where, checks.MANIFEST_MALFORMED, f"field {key} must be a number of seconds")
    text = entry.get("text")
    if text is not None and not isinstance(text, str):
        return Bad(item_id, where, checks.MANIFEST_MALFORMED, "field text must be a string")
    extra = {k: v for k, v in entry.items() if k not in _MANIFEST_RESERVED}
    if any(_has_surrogates(json.dumps(v, ensure_ascii=False)) for v in extra.values()):
        return Bad(item_id, where, checks.MANIFEST_MALFORMED, "a field other than text is not valid UTF-8")
    audio_uri = path if storage.is_gcs(path) or path.startswith("/") else storage.join(base, path)
    try:
        audio = storage.read_bytes(audio_uri)
    except FileNotFoundError:
        return Bad(item_id, where, checks.AUDIO_MISSING, f"no such file: {audio_uri}")
    except IsADirectoryError:
        return Bad(item_id, where, checks.AUDIO_MISSING, f"a directory, not a file: {audio_uri}")
    if offset:
        if duration is None:
            return Bad(item_id, where, checks.MANIFEST_MALFORMED, "an entry with an offset needs a duration")
        segment = _cut_segment(audio, float(offset), float(duration))
        if isinstance(segment, checks.Refusal):
            return Bad(item_id, where, segment.reason, segment.detail)
        audio = segment
        if not entry.get("id"):
            item_id = f"{item_id}-{offset:.2f}"
    return Item(item_id, where, audio, text, None if duration is None else float(duration), extra)


def _is_seconds(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _has_surrogates(text: str) -> bool:
    return not text.isascii() and _SURROGATES.search(text) is not None


def _cut_segment(audio: bytes, offset: float, duration: float) -> bytes | checks.Refusal:
    """``duration`` seconds from ``offset`` of an audio file, as 16 kHz mono FLAC."""
    import io

    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(audio)) as handle:
            rate = handle.samplerate
            handle.seek(int(round(offset * rate)))
            samples = handle.read(int(round(duration * rate)), dtype="float32", always_2d=True)
    except Exception as err:
        return checks.Refusal(checks.AUDIO_CORRUPT, checks.first_line(err))
    return checks.encode_flac(checks.to_mono_16k(samples, rate))


# --- evaluation sets ----------------------------------------------------------------------

MANIFEST_NAME = "manifest.json"


def export_manifest(
    input_: str | Mapping[str, Any],
    out_dir: str,
    split: str | None = None,
    rules: checks.Rules | None = None,
    max_reject_fraction: float = 0.01,
) -> str:
    """Write an INPUT's utterances as FLAC files plus a NeMo manifest; return the manifest URI.

    The manifest (``<out_dir>/manifest.json``) has ``audio_filepath`` relative to its own
    directory (``audio/<id>.flac``), ``duration`` measured from the audio, the normalised
    ``text``, ``source_id`` and any extra keys of a manifest input. Items are checked as
    write-shards checks them (without a duration filter unless ``rules`` sets one); rejects
    go to ``rejects.jsonl``. A finished export (``_SUCCESS``) is returned as it is.

    Raises:
        RejectThresholdExceeded: more than ``max_reject_fraction`` of the items were rejected.
    """
    manifest_uri = storage.join(out_dir, MANIFEST_NAME)
    if storage.is_complete(out_dir):
        return manifest_uri
    from components.progress import Progress

    rules = rules or checks.Rules(min_duration=None, max_duration=None)
    source = open_source(input_, split=split)
    rejects, filtered = Rejects(), Rejects()
    seen: set[str] = set()
    accepted = 0
    progress = Progress("export-manifest utterances", count_rows(source))
    with storage.atomic_writer(manifest_uri) as manifest:
        for item in iter_items(source):
            progress.update()
            if isinstance(item, Bad):
                rejects.add(item.id, item.source, item.reason, item.detail)
                continue
            result = checks.check(item.audio, item.text, item.duration, rules)
            if isinstance(result, checks.Refusal):
                target = filtered if result.reason in checks.FILTER_REASONS else rejects
                target.add(item.id, item.source, result.reason, result.detail)
                continue
            stem = member_stem(item.id)
            if stem in seen:
                rejects.add(item.id, item.source, checks.DUPLICATE_ID, f"an earlier item is named {stem}")
                continue
            seen.add(stem)
            data = result.audio if result.extension == "flac" else _to_flac(result.audio)
            relative = f"audio/{stem}.flac"
            storage.write_bytes(storage.join(out_dir, relative), data)
            entry = {"audio_filepath": relative, "duration": result.duration, "text": result.text}
            entry.update({"source_id": item.id, **item.extra})
            manifest.write(manifest_line(entry).encode("utf-8"))
            accepted += 1
    progress.finish()
    everything = Rejects()
    everything.extend(rejects)
    everything.extend(filtered)
    everything.write(storage.join(out_dir, "rejects.jsonl"))
    rejects.check(accepted + len(filtered), max_reject_fraction, "export-manifest")
    storage.mark_complete(out_dir, json.dumps({"utterances": accepted, "time": int(time.time())}) + "\n")
    log.info("exported %d utterances to %s (%d rejected)", accepted, manifest_uri, len(everything))
    return manifest_uri


def _to_flac(data: bytes) -> bytes:
    import io

    import soundfile as sf

    samples, rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return checks.encode_flac(checks.to_mono_16k(samples, rate))

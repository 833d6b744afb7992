"""Reading a parquet file of utterances as :class:`~components.items.Item` s, streaming.

Only the columns needed are read, one record batch at a time and at most one row group in
memory, so memory does not grow with the file. A file that lacks a column or whose audio
column holds no bytes is a :class:`~components.items.SourceError` naming the file.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from components import storage
from components.columns import Columns
from components.items import Item, SourceError

PARQUET_BUFFER_BYTES = 4 * 1024 * 1024


@contextlib.contextmanager
def open_parquet(uri: str) -> Iterator[Any]:
    """A ``pyarrow.parquet.ParquetFile`` for a local or gs:// file, closed on exit."""
    import pyarrow.parquet as pq

    with contextlib.ExitStack() as stack:
        # buffer_size reads column chunks through a bounded buffer, not in one piece
        source = stack.enter_context(storage.open_read(uri)) if storage.is_gcs(uri) else uri
        parquet = pq.ParquetFile(source, buffer_size=PARQUET_BUFFER_BYTES)
        stack.callback(parquet.close)
        yield parquet


def parquet_rows(uri: str) -> int:
    """The rows of a parquet file, from its footer."""
    with open_parquet(uri) as parquet:
        return parquet.metadata.num_rows


def parquet_batches(uri: str, columns: Columns, batch_rows: int) -> Iterator[list[Item]]:
    """The file's rows as items, ``batch_rows`` at a time; ids ``<file stem>-<row>`` when the
    file has no id column or a row no id."""
    import pyarrow as pa
    import pyarrow.compute as pc

    with open_parquet(uri) as parquet:
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

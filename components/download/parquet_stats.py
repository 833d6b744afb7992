"""What a download's parquet files hold: their columns, rows and hours, read without loading them."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from components import storage
from components.audio import header_seconds
from components.columns import Columns
from components.download.errors import DownloadError


@dataclasses.dataclass(frozen=True)
class FileStats:
    """One parquet file's figures.

    Attributes:
        rows: its rows.
        duration: the sum of the duration column, in its unit (summed over files before
            scaling, as integers where they are), or seconds measured from the audio headers.
        unreadable: audio whose header gave no duration (measured from the audio only).
    """

    rows: int
    duration: float
    unreadable: int = 0


def missing_column(uri: str, role: str, name: str, names: Sequence[str]) -> str:
    """The error for a file without the ``role`` column ``name``: it says which option sets it."""
    return (
        f"{uri}: no column {name!r} (the {role} column; set it with --{role}-column); "
        f"the file has columns {', '.join(names)}"
    )


def require_columns(uri: str, columns: Columns, names: Sequence[str]) -> None:
    """Raise naming the file and the first of ``columns`` it lacks."""
    for role, name in columns.roles():
        if name not in names:
            raise DownloadError(missing_column(uri, role, name, names))


def check_schema(uri: str, columns: Columns) -> list[str]:
    """The column names of a parquet file (its footer only); a missing column is an error
    naming the file, the column and the columns there are."""
    import pyarrow.parquet as pq

    with storage.open_read(uri) as stream:
        names = list(pq.ParquetFile(stream).schema_arrow.names)
    require_columns(uri, columns, names)
    return names


def parquet_stats(uri: str, columns: Columns) -> FileStats:
    """Rows from the parquet footer; durations from the duration column alone (``columns`` as
    :meth:`Columns.resolve` gives them), or else from the audio headers, a few rows at a time.
    A missing column is an error naming the file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with storage.open_read(uri) as stream:
        parquet = pq.ParquetFile(stream, buffer_size=1 << 20)
        require_columns(uri, columns, parquet.schema_arrow.names)
        rows = parquet.metadata.num_rows
        if columns.duration:
            total = 0
            for batch in parquet.iter_batches(columns=[columns.duration], batch_size=65536):
                total += pc.sum(batch.column(0)).as_py() or 0
            return FileStats(rows, total)
        seconds = 0.0
        unreadable = 0
        for batch in parquet.iter_batches(columns=[columns.audio], batch_size=16):
            for value in batch.column(0).to_pylist():
                measured = header_seconds(value.get("bytes") if isinstance(value, dict) else value)
                if measured is None:
                    unreadable += 1
                else:
                    seconds += measured
        return FileStats(rows, seconds, unreadable)

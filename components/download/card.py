"""The cards of ``asrflow download`` and ``asrflow resolve-revision``, declared once.

Write-shards and export read a download through :class:`DownloadCard` (its ``files``,
``format`` and columns); the KFP components put it in their ``card`` artifact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

from components.cards import Card
from components.columns import Columns

PARQUET = "parquet"
"""A download of parquet files (the hub's layout)."""
MANIFEST = "manifest"
"""A download of a NeMo manifest and its audio files."""
FORMATS = (PARQUET, MANIFEST)


@dataclasses.dataclass(kw_only=True)
class DownloadCard(Card):
    """What a download holds and where it came from.

    Attributes:
        out_dir: the download's directory; ``files`` are relative to it.
        source: the source as given (local paths made absolute).
        dataset: the dataset's name in the key (a hub repo id, or from the source).
        config: the dataset config.
        split: the split.
        revision: the hub commit SHA, or the content hash of any other source.
        format: ``parquet``, or ``manifest`` (a NeMo manifest with audio under ``audio/``).
        files: the data files, relative to ``out_dir`` ('/'-separated).
        num_files: how many ``files``.
        bytes: the bytes copied (for a manifest, of its audio files).
        rows: utterances.
        hours: hours of audio.
        columns: the parquet columns by role (``id``, ``audio``, ``text``, ``duration``); None
            for a manifest.
        duration_unit: the duration column's unit, ``ms`` or ``s``; None without one.
        audio_files: a manifest's audio files (manifest downloads only).
        audio_unreadable: audio whose header did not give a duration (parquet without a
            duration column only).
    """

    STEP: ClassVar[str] = "download"
    OMITTED_WHEN_NONE: ClassVar[tuple[str, ...]] = ("audio_files", "audio_unreadable")

    source: str
    dataset: str
    config: str
    split: str
    revision: str
    format: str
    files: list[str]
    num_files: int
    bytes: int
    rows: int
    hours: float
    columns: dict[str, str | None] | None
    duration_unit: str | None
    audio_files: int | None = None
    audio_unreadable: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON: figures that do not apply to this kind of download are left out."""
        data = super().to_dict()
        return {k: v for k, v in data.items() if not (k in self.OMITTED_WHEN_NONE and v is None)}

    def parquet_columns(self) -> Columns:
        """The columns to read this download's parquet files with (defaults for a manifest).

        Raises:
            ValueError: ``duration_unit`` is not ``ms`` or ``s``.
        """
        return Columns.from_mapping(self.columns, self.duration_unit)


@dataclasses.dataclass(kw_only=True)
class ResolveRevisionCard(Card):
    """The revision a download of a source would have now (nothing copied).

    Attributes:
        out_dir: none: resolve-revision writes no directory (left out of the JSON); the card
            is printed, and is the KFP component's ``card`` artifact.
        source: the source as given (local paths made absolute).
        dataset: the dataset's name.
        config: the dataset config.
        split: the split.
        revision: the hub commit SHA, or the content hash of any other source.
        num_files: the data files a download would copy.
        bytes: their bytes.
    """

    STEP: ClassVar[str] = "resolve-revision"

    out_dir: str = ""
    source: str
    dataset: str
    config: str
    split: str
    revision: str
    num_files: int
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        """The card's JSON (without ``out_dir``: there is none)."""
        data = super().to_dict()
        del data["out_dir"]
        return data

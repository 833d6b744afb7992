"""Which parquet columns of a speech dataset hold what: declared once for download and readers.

``asrflow download`` checks a source's files against a :class:`Columns` and records it in its
card; write-shards and export read the files through the same one (see
:meth:`components.download.card.DownloadCard.parquet_columns`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

ROLES = ("id", "audio", "text", "duration")
"""What a column can hold, in the order columns are checked and recorded."""
DURATION_CANDIDATES = ("duration_ms", "duration")
"""The duration columns looked for, in this order, when none is named."""
DURATION_UNITS = ("ms", "s")
MILLISECONDS_SUFFIX = "_ms"
"""A duration column whose name ends so holds milliseconds (``duration_ms``); others seconds."""


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which parquet columns hold what (People's Speech's names by default).

    Attributes:
        id: the utterance id column; None makes ids from the file name and row.
        audio: a struct column with a ``bytes`` field (the hub's Audio feature) or a binary column.
        text: the transcript column (string or binary).
        duration: a duration column; None or "": the first of :data:`DURATION_CANDIDATES`
            that the file has (see :meth:`resolve`), else none.
        duration_unit: "ms" or "s"; None: by the column's name (see :meth:`unit`).

    Raises:
        ValueError: ``duration_unit`` is neither "ms" nor "s".
    """

    id: str | None = "id"
    audio: str = "audio"
    text: str = "text"
    duration: str | None = None
    duration_unit: str | None = None

    def __post_init__(self) -> None:
        if self.duration_unit is not None and self.duration_unit not in DURATION_UNITS:
            raise ValueError(f"duration unit must be ms or s, got {self.duration_unit!r}")

    @classmethod
    def from_options(
        cls, id_column: str = "", audio_column: str = "", text_column: str = "", duration_column: str = ""
    ) -> Columns:
        """The columns that ``--id-column`` and the like (or KFP parameters) name; "" is the default."""
        default = cls()
        return cls(
            id=id_column or default.id,
            audio=audio_column or default.audio,
            text=text_column or default.text,
            duration=duration_column or None,
        )

    def roles(self) -> list[tuple[str, str]]:
        """``(role, column)`` for every named column, in the order id, audio, text, duration."""
        return [(role, name) for role, name in self.mapping().items() if name]

    def needed(self) -> list[str]:
        """The names of the columns a reader reads."""
        return [name for _, name in self.roles()]

    def resolve(self, names: Sequence[str]) -> Columns:
        """These columns for a file with columns ``names``: the duration column picked."""
        if self.duration:
            return self
        found = next((name for name in DURATION_CANDIDATES if name in names), None)
        return dataclasses.replace(self, duration=found)

    def unit(self) -> str | None:
        """The duration column's unit, "ms" or "s"; None without a duration column."""
        if not self.duration:
            return None
        return self.duration_unit or ("ms" if self.duration.endswith(MILLISECONDS_SUFFIX) else "s")

    def duration_scale(self) -> float:
        """Seconds per unit of the duration column (1.0 without one)."""
        return 0.001 if self.unit() == "ms" else 1.0

    def mapping(self) -> dict[str, str | None]:
        """The ``columns`` of a download card: ``{id, audio, text, duration}``."""
        return {role: getattr(self, role) for role in ROLES}

    @classmethod
    def from_mapping(cls, mapping: dict[str, str | None] | None, duration_unit: str | None) -> Columns:
        """The columns a download card records; a role it does not name keeps its default."""
        default = dataclasses.asdict(cls())
        chosen = {role: (mapping or {}).get(role, default[role]) for role in ROLES}
        return cls(**chosen, duration_unit=duration_unit)


DEFAULT_COLUMNS = Columns()
"""People's Speech's columns, the duration column found by name."""

"""What reading a dataset yields: an :class:`Item` per usable utterance, a :class:`Bad` per row or
line that cannot be used, and :class:`SourceError` for an INPUT that cannot be read at all."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, NamedTuple


class SourceError(ValueError):
    """An INPUT that cannot be read as a whole; the message names the file and what is wrong."""


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

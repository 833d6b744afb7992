"""NeMo manifests (JSON lines), the shared text normalisation, and reject accounting."""

from __future__ import annotations

import collections
import json
import re
import unicodedata
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from components import layout, storage

REQUIRED_KEYS = ("audio_filepath", "duration", "text")


class ManifestError(ValueError):
    """A manifest line that cannot be used; the message names the file and line."""


# --- text normalisation: one function for training and evaluation alike -------------------

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_KEPT = re.compile(r"[^\w' ]|_", re.UNICODE)
_STRAY_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")
_SPACES = re.compile(r"\s+")


def normalize_text(text: str) -> str:
    """Lower case; keep letters, digits, spaces and word-internal apostrophes; drop the rest.

    Punctuation becomes a space (so "well-known" is two words), quotes around words go, and
    "it's" keeps its apostrophe because it changes the meaning.
    """
    text = unicodedata.normalize("NFKC", text).translate(_APOSTROPHES).lower()
    text = _SPACES.sub(" ", text)
    text = _NOT_KEPT.sub(" ", text)
    text = _STRAY_APOSTROPHE.sub(" ", text)
    return _SPACES.sub(" ", text).strip()


# --- manifests ---------------------------------------------------------------------------


def parse_manifest_line(line: str, source: str, line_number: int) -> dict[str, Any]:
    """Parse one manifest line, or raise :class:`ManifestError` naming ``source:line_number``."""
    where = f"{source}:{line_number}"
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as err:
        raise ManifestError(f"{where}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in entry]
    if missing:
        raise ManifestError(f"{where}: missing field(s) {', '.join(missing)}")
    if not isinstance(entry["audio_filepath"], str) or not entry["audio_filepath"]:
        raise ManifestError(f"{where}: field audio_filepath must be a non-empty string")
    if isinstance(entry["duration"], bool) or not isinstance(entry["duration"], (int, float)):
        raise ManifestError(f"{where}: field duration must be a number of seconds")
    if not isinstance(entry["text"], str):
        raise ManifestError(f"{where}: field text must be a string")
    return entry


def iter_manifest(uri: str) -> Iterator[tuple[int, dict[str, Any] | ManifestError]]:
    """Yield ``(line_number, entry)`` for each non-blank line, streaming.

    A bad line is yielded as a :class:`ManifestError` instead of an entry, so that a caller
    over a large dataset can count it as a reject and go on; :func:`read_manifest` raises.
    """
    with storage.open_read(uri) as stream:
        for line_number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                yield line_number, ManifestError(f"{uri}:{line_number}: not valid UTF-8 ({err.reason})")
                continue
            if not line.strip():
                continue
            try:
                yield line_number, parse_manifest_line(line, uri, line_number)
            except ManifestError as err:
                yield line_number, err


def read_manifest(uri: str) -> list[dict[str, Any]]:
    """All entries of a manifest; the first bad line raises :class:`ManifestError`."""
    entries = []
    for _, entry in iter_manifest(uri):
        if isinstance(entry, ManifestError):
            raise entry
        entries.append(entry)
    return entries


def manifest_line(entry: Mapping[str, Any]) -> str:
    """One manifest line: the entry as compact JSON, keys in a fixed order, non-ASCII kept."""
    return json.dumps(entry, ensure_ascii=False, separators=(", ", ": ")) + "\n"


def write_manifest(uri: str, entries: Iterable[Mapping[str, Any]]) -> int:
    """Atomically write entries as a manifest; returns the number of lines."""
    count = 0
    with storage.atomic_writer(uri) as out:
        for entry in entries:
            out.write(manifest_line(entry).encode("utf-8"))
            count += 1
    return count


# --- reject accounting -------------------------------------------------------------------

DEFAULT_MAX_REJECT_FRACTION = 0.01
"""The share of unusable items a large-data step skips before it fails (KFP components repeat
it as a literal default: KFP copies a component's source, not this module)."""


class RejectThresholdExceeded(RuntimeError):
    """More items were rejected than the step allows."""


class Rejects:
    """Collects rejected items with their reason; counts by reason; checks a threshold."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.by_reason: collections.Counter[str] = collections.Counter()

    def add(self, item_id: str, source: str, reason: str, detail: str = "") -> None:
        record = {"id": item_id, "source": source, "reason": reason}
        if detail:
            record["detail"] = detail
        self.items.append(record)
        self.by_reason[reason] += 1

    def extend(self, other: Rejects) -> None:
        for record in other.items:
            self.items.append(record)
            self.by_reason[record["reason"]] += 1

    def __len__(self) -> int:
        return len(self.items)

    def counts(self) -> dict[str, int]:
        return dict(sorted(self.by_reason.items()))

    def write(self, uri: str) -> None:
        with storage.atomic_writer(uri) as out:
            for record in self.items:
                out.write((json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8"))

    def check(self, accepted: int, max_fraction: float, step: str) -> None:
        """Raise when the rejected fraction of all items is above ``max_fraction``."""
        total = accepted + len(self)
        if total and len(self) / total > max_fraction:
            reasons = ", ".join(f"{reason}: {n}" for reason, n in self.counts().items())
            raise RejectThresholdExceeded(
                f"{step}: rejected {len(self)} of {total} items "
                f"({len(self) / total:.1%} > --max-reject-fraction {max_fraction:.1%}); "
                f"by reason: {reasons}"
            )


def tarred_manifest_uris(tarred_dir: str) -> list[str]:
    """A tarred dataset's manifests: its full manifest, or else every sharded manifest in shard
    order (a dataset whose merge has not run yet); empty when it has neither."""
    full = storage.join(tarred_dir, layout.TARRED_MANIFEST_NAME)
    if storage.exists(full):
        return [full]
    try:
        listed = storage.list_files(storage.join(tarred_dir, layout.SHARDED_MANIFESTS_DIR), suffix=".json")
    except FileNotFoundError:
        return []
    sharded = sorted((shard_id, f.uri) for f in listed if (shard_id := _shard_id(f.uri)) is not None)
    return [uri for _, uri in sharded]


def _shard_id(uri: str) -> int | None:
    """``i`` when ``uri`` is named as the sharded manifest of shard ``i``, else None."""
    name = storage.basename(uri)
    digits = re.search(r"\d+", name)
    if digits is None:
        return None
    shard_id = int(digits.group())
    return shard_id if storage.basename(layout.sharded_manifest_name(shard_id)) == name else None

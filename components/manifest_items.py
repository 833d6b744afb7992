"""Reading a NeMo manifest's lines as :class:`~components.items.Item` s, streaming and forgiving.

Unlike :func:`components.manifest.read_manifest`, which refuses a bad manifest, each line
here becomes an Item or, when it cannot be used (malformed JSON, a missing audio file), a
:class:`~components.items.Bad` with a named reason, so a large dataset counts its faults and
goes on. Relative audio paths resolve against the manifest's directory; an ``offset`` cuts
the segment out of the audio file.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import Any

from components import audio as checks
from components import storage
from components.items import Bad, Item
from components.member_names import AUDIO_SUFFIX

MANIFEST_RESERVED = ("audio_filepath", "duration", "text", "offset", "id", "shard_id")
"""Manifest keys with a meaning here; the others travel with an item as ``extra``."""
_SURROGATES = re.compile("[\ud800-\udfff]")


def manifest_batches(
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
            batch.append(manifest_item(raw, f"{uri}:line {line_number}", base))
            if len(batch) >= batch_rows:
                yield batch
                batch = []
    if batch:
        yield batch


def manifest_item(raw: bytes, where: str, base: str) -> Item | Bad:
    """One manifest line (as bytes) as an item with its audio read, or why it cannot be used."""
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
        item_id = AUDIO_SUFFIX.sub("", path)
    offset = entry.get("offset", 0.0)
    duration = entry.get("duration")
    for key, value in (("duration", duration), ("offset", offset)):
        if value is not None and not _is_seconds(value):
            return Bad(item_id, where, checks.MANIFEST_MALFORMED, f"field {key} must be a number of seconds")
    text = entry.get("text")
    if text is not None and not isinstance(text, str):
        return Bad(item_id, where, checks.MANIFEST_MALFORMED, "field text must be a string")
    extra = {k: v for k, v in entry.items() if k not in MANIFEST_RESERVED}
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
    import soundfile as sf

    try:
        with sf.SoundFile(io.BytesIO(audio)) as handle:
            rate = handle.samplerate
            handle.seek(int(round(offset * rate)))
            samples = handle.read(int(round(duration * rate)), dtype="float32", always_2d=True)
    except Exception as err:
        return checks.Refusal(checks.AUDIO_CORRUPT, checks.first_line(err))
    return checks.encode_flac(checks.to_mono_16k(samples, rate))

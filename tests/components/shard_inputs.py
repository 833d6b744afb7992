"""Inputs for the write-shards and sources tests: valid rows of the bundled corpus plus rows
broken in every way a real dataset breaks, each with the reject reason it must get."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from tests.corpus.generate import SCHEMA


@dataclass(frozen=True)
class Row:
    """One parquet row; ``reason`` is the reject reason it must get (None: accepted)."""

    id: str
    audio: bytes
    duration_ms: int
    text: str | bytes
    reason: str | None = None


def bundled_rows(corpus: Path, count: int, file_index: int = 0) -> list[Row]:
    """The first ``count`` rows of a bundled train file, as valid rows."""
    path = corpus / "clean" / f"train-{file_index:05d}-of-00004.parquet"
    table = pq.read_table(path).slice(0, count)
    return [
        Row(r["id"], r["audio"]["bytes"], r["duration_ms"], r["text"])
        for r in table.to_pylist()  # small: a handful of rows
    ]


def flac(samples: np.ndarray, rate: int) -> bytes:
    out = io.BytesIO()
    sf.write(out, samples, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue()


def decode(audio: bytes) -> tuple[np.ndarray, int]:
    samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    return samples, rate


def bad_rows(valid: list[Row]) -> list[Row]:
    """Rows broken in each known way, made from valid ones (needs at least 12 valid rows)."""
    samples, rate = decode(valid[0].audio)
    corrupt = bytearray(valid[1].audio)
    corrupt[:64] = bytes(64)  # the FLAC magic and STREAMINFO gone
    long_audio = np.concatenate([samples] * 8)
    stereo = np.stack([samples, samples * 0.5], axis=1)
    return [
        Row("bad/corrupt", bytes(corrupt), valid[1].duration_ms, valid[1].text, "audio_corrupt"),
        Row("bad/empty-audio", b"", 1000, valid[2].text, "audio_empty"),
        Row("bad/empty-text", valid[3].audio, valid[3].duration_ms, "   ", "text_empty"),
        Row("bad/not-utf8", valid[4].audio, valid[4].duration_ms, b"caf\xe9 au lait", "text_not_utf8"),
        Row("bad/punctuation", valid[5].audio, valid[5].duration_ms, "?! -- ... ,;", "text_empty"),
        Row("bad/8khz", flac(samples[::2], rate // 2), valid[0].duration_ms, valid[0].text, "sample_rate"),
        Row("bad/stereo", flac(stereo, rate), valid[0].duration_ms, valid[0].text, "channels"),
        Row("bad/too-long", flac(long_audio, rate), len(long_audio) * 1000 // rate, "long", "too_long"),
        Row("bad/too-short", flac(samples[:800], rate), 50, "short", "too_short"),
        Row("bad/mismatch", valid[6].audio, valid[6].duration_ms + 5000, valid[6].text, "duration_mismatch"),
        Row(valid[7].id, valid[8].audio, valid[8].duration_ms, valid[8].text, "duplicate_id"),
    ]


def write_parquet(rows: list[Row], path: Path, row_group_size: int = 8) -> Path:
    """Rows as a parquet file with People's Speech's schema (text may hold invalid UTF-8)."""
    texts = [r.text.encode("utf-8") if isinstance(r.text, str) else r.text for r in rows]
    table = pa.table(
        {
            "id": pa.array([r.id for r in rows], pa.string()),
            "audio": pa.array(
                [{"bytes": r.audio, "path": f"{r.id}.flac"} for r in rows],
                SCHEMA.field("audio").type,
            ),
            "duration_ms": pa.array([r.duration_ms for r in rows], pa.int32()),
            # a string column with bytes Arrow did not check, as a broken upstream file has
            "text": pa.array(texts, pa.binary()).view(pa.string()),
        },
        schema=SCHEMA,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def write_manifest_input(rows: list[Row], directory: Path, extra_lines: list[bytes]) -> Path:
    """Audio files plus a NeMo manifest (relative paths) for ``rows``, then ``extra_lines``."""
    audio_dir = directory / "wavs"
    audio_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, row in enumerate(rows):
        name = f"utt{index:03d}.flac"
        (audio_dir / name).write_bytes(row.audio)
        entry: dict[str, Any] = {
            "audio_filepath": f"wavs/{name}",
            "duration": row.duration_ms / 1000,
            "text": row.text,
            "speaker": index % 3,
        }
        lines.append(json.dumps(entry).encode())
    manifest = directory / "manifest.json"
    manifest.write_bytes(b"\n".join(lines + extra_lines) + b"\n")
    return manifest

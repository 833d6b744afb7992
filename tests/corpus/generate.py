"""Generate a People's-Speech-shaped corpus of real synthetic speech, deterministically.

The output has the layout and parquet schema of ``MLCommons/peoples_speech`` on the hub::

    <out>/clean/train-00000-of-0000K.parquet     config "clean", split "train"
    <out>/validation/validation-00000-of-00001.parquet
    <out>/test/test-00000-of-00001.parquet
    <out>/README.md                              how it was made (command, seed) + hub-style configs
    <out>/SHA256SUMS                             checksums of the parquet files

with columns ``id`` (string), ``audio`` (struct ``bytes``: FLAC 16 kHz mono, ``path``: string),
``duration_ms`` (int32) and ``text`` (string). Speech comes from espeak-ng and flite with
several voices, rates and pitches; each "source recording" (a run of utterances sharing an id
prefix, like a People's Speech source file) has one speaker. The same arguments and seed give
byte-identical parquet files: texts and speakers come from seeded RNGs, both synthesisers are
deterministic, and the parquet writer uses fixed settings.

Samples are quantised to 10 significant bits (FLAC stores the 6 unused low bits for free),
which keeps the bundled corpus small; 60 dB of signal-to-noise is far beyond what ASR needs.

Example::

    python -m tests.corpus.generate --out tests/data/peoples_speech --train 300 --dev 60 --test 60 --seed 0
    python -m tests.corpus.generate --out /tmp/ps1h --hours 1 --dev 60 --test 60 --seed 1
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import random
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf

from tests.corpus import text as grammar

log = logging.getLogger("asrflow.corpus")

SAMPLE_RATE = 16000
MIN_SECONDS = 1.5
MAX_SECONDS = 8.0
UTTERANCES_PER_SOURCE = 15
ROW_GROUP_SIZE = 100
QUANTUM = 64  # keep 10 significant bits of 16
ESPEAK_VOICES = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbcwmd",
)
ESPEAK_VARIANTS = ("", "+f2", "+f3", "+f4", "+m3", "+m5", "+m7")
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
# espeak-ng variants the mixed corpus never uses: the voices the shipped pretrained model learnt
UNHEARD_ESPEAK_VARIANTS = ("+f1", "+f5", "+m1", "+m2", "+m4", "+m6", "+m8")
VOICE_SETS = {
    "mixed": "espeak-ng (60%, variants " + " ".join(v or "default" for v in ESPEAK_VARIANTS) + ") and flite",
    "espeak-unheard": "espeak-ng only, with variants the mixed set never uses ("
    + " ".join(UNHEARD_ESPEAK_VARIANTS)
    + ")",
    "flite": "flite only (" + " ".join(FLITE_VOICES) + ")",
}
# hub split name -> (directory, file stem)
SPLITS = {"train": ("clean", "train"), "validation": ("validation", "validation"), "test": ("test", "test")}
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("audio", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
        ("duration_ms", pa.int32()),
        ("text", pa.string()),
    ],
    metadata={
        # what the `datasets` library writes, so that it decodes the column as Audio
        b"huggingface": json.dumps(
            {
                "info": {
                    "features": {
                        "id": {"dtype": "string", "_type": "Value"},
                        "audio": {"sampling_rate": SAMPLE_RATE, "_type": "Audio"},
                        "duration_ms": {"dtype": "int32", "_type": "Value"},
                        "text": {"dtype": "string", "_type": "Value"},
                    }
                }
            },
            sort_keys=True,
        ).encode()
    },
)


@dataclass(frozen=True)
class Speaker:
    """One synthetic voice: engine, voice name and the settings that vary it."""

    engine: str  # "espeak" or "flite"
    voice: str
    rate: float  # espeak: words per minute; flite: duration stretch (1.0 = normal)
    pitch: int  # espeak: 0-99; flite: mean F0 in Hz
    gain: float  # peak amplitude as a fraction of full scale


@dataclass(frozen=True)
class Utterance:
    """Everything needed to synthesise one row; the worker needs nothing else."""

    id: str
    sentences: tuple[str, ...]
    speaker: Speaker

    @property
    def text(self) -> str:
        return " ".join(self.sentences)


def _rng(seed: int, *keys: object) -> random.Random:
    # string seeds hash with SHA-512 inside `random`, the same on every machine and run
    return random.Random(":".join(str(k) for k in (seed, *keys)))


def make_speaker(rng: random.Random, voices: str = "mixed") -> Speaker:
    """Draw a voice of the set ``voices`` (a key of VOICE_SETS) and its rate, pitch and level."""
    if voices == "flite":
        return _flite_speaker(rng)
    if voices == "espeak-unheard":
        return _espeak_speaker(rng, UNHEARD_ESPEAK_VARIANTS)
    if rng.random() < 0.6:
        return _espeak_speaker(rng, ESPEAK_VARIANTS)
    return _flite_speaker(rng)


def _espeak_speaker(rng: random.Random, variants: tuple[str, ...]) -> Speaker:
    voice = rng.choice(ESPEAK_VOICES) + rng.choice(variants)
    return Speaker("espeak", voice, round(rng.uniform(140, 195)), rng.randrange(25, 76), _gain(rng))


def _flite_speaker(rng: random.Random) -> Speaker:
    voice = rng.choice(FLITE_VOICES)
    pitch = rng.randrange(150, 211) if voice == "slt" else rng.randrange(90, 141)
    return Speaker("flite", voice, round(rng.uniform(0.85, 1.2), 2), pitch, _gain(rng))


def _gain(rng: random.Random) -> float:
    return round(rng.uniform(0.35, 0.8), 2)


def _words_per_second(speaker: Speaker) -> float:
    # measured on these voices, pauses included; only used to aim the text length
    if speaker.engine == "espeak":
        return speaker.rate / 60.0 * 0.85
    return 2.6 / speaker.rate


def make_sentences(rng: random.Random, speaker: Speaker, forbidden: frozenset[str]) -> tuple[str, ...]:
    """Sentences enough for a target duration drawn between MIN_SECONDS and MAX_SECONDS.

    Sentences in ``forbidden`` (those of earlier splits, so that validation and test are
    held out from train) are never drawn.
    """
    # skewed towards short utterances, as real segmented speech is, with a long tail
    target = MIN_SECONDS * (MAX_SECONDS / MIN_SECONDS) ** (rng.random() ** 1.3)
    budget = max(3, round((target - 0.4) * _words_per_second(speaker)))
    sentences: list[str] = []
    words = 0
    while not sentences or words < budget:
        candidate = grammar.sentence(rng)
        if candidate in forbidden or candidate in sentences:
            continue
        length = len(candidate.split())
        if sentences and words + length > budget * 1.25:
            break
        sentences.append(candidate)
        words += length
    return tuple(sentences)


def plan_split(
    seed: int, split: str, count: int, forbidden: frozenset[str], voices: str = "mixed"
) -> Iterator[Utterance]:
    """Yield the utterances of one split in order (texts and speakers only, no audio).

    Utterance ``i`` depends only on the seed, the split, ``i`` and ``forbidden``.
    """
    directory = SPLITS[split][0]
    speaker = make_speaker(_rng(seed, split, "source", 0), voices)
    for index in range(count):
        source = index // UTTERANCES_PER_SOURCE
        if index % UTTERANCES_PER_SOURCE == 0:
            speaker = make_speaker(_rng(seed, split, "source", source), voices)
        name = f"synth_DOT_{directory}_DOT_{source:05d}"
        utt_id = f"{name}/{name}_DOT_wav_{index % UTTERANCES_PER_SOURCE:05d}.flac"
        yield Utterance(utt_id, make_sentences(_rng(seed, split, "text", index), speaker, forbidden), speaker)


def _run_engine(speaker: Speaker, text: str, rate: float) -> tuple[np.ndarray, int]:
    if speaker.engine == "espeak":
        cmd = ["espeak-ng", "-v", speaker.voice, "-s", str(round(rate)), "-p", str(speaker.pitch), "--stdout"]
        wav = subprocess.run(cmd, input=text.encode(), capture_output=True, check=True).stdout
        audio, rate_hz = sf.read(io.BytesIO(wav), dtype="float64")
        return audio, rate_hz
    with tempfile.TemporaryDirectory(prefix="flite-") as tmp:
        out = os.path.join(tmp, "out.wav")
        cmd = ["flite", "-voice", speaker.voice, "--setf", f"duration_stretch={rate:.3f}"]
        cmd += ["--setf", f"int_f0_target_mean={speaker.pitch}", "-t", text, "-o", out]
        subprocess.run(cmd, capture_output=True, check=True)
        audio, rate_hz = sf.read(out, dtype="float64")
        return audio, rate_hz


def _to_16k(audio: np.ndarray, rate_hz: int) -> np.ndarray:
    if rate_hz == SAMPLE_RATE:
        return audio
    from scipy.signal import resample_poly

    divisor = math.gcd(SAMPLE_RATE, rate_hz)
    return resample_poly(audio, SAMPLE_RATE // divisor, rate_hz // divisor)


def synthesize(utterance: Utterance) -> tuple[bytes, int]:
    """FLAC bytes (16 kHz mono, 16-bit) and duration in ms for one utterance.

    Audio longer than MAX_SECONDS is synthesised again faster; shorter than MIN_SECONDS is
    padded with silence on both sides, as segmented recordings are.
    """
    speaker = utterance.speaker
    rate = speaker.rate
    for _ in range(4):
        audio, rate_hz = _run_engine(speaker, utterance.text, rate)
        audio = _to_16k(audio, rate_hz)
        seconds = len(audio) / SAMPLE_RATE
        if seconds <= MAX_SECONDS - 0.05:
            break
        factor = seconds / (MAX_SECONDS - 0.3)
        rate = rate * factor if speaker.engine == "espeak" else rate / factor
    else:
        raise RuntimeError(f"{utterance.id}: still {seconds:.2f}s after speeding up: {utterance.text!r}")
    if seconds < MIN_SECONDS:
        pad = int((MIN_SECONDS + 0.1) * SAMPLE_RATE) - len(audio)
        audio = np.pad(audio, (pad // 2, pad - pad // 2))
    peak = float(np.max(np.abs(audio))) or 1.0
    pcm = np.round(audio * (speaker.gain * 32767 / peak / QUANTUM)) * QUANTUM
    pcm = np.clip(pcm, -32768, 32767).astype(np.int16)
    buffer = io.BytesIO()
    sf.write(buffer, pcm, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue(), round(len(pcm) * 1000 / SAMPLE_RATE)


def _synthesize_batch(utterances: list[Utterance]) -> list[tuple[bytes, int]]:
    return [synthesize(u) for u in utterances]


def _worker_context() -> multiprocessing.context.BaseContext:
    """Synthesis workers start from a fork server that has imported this module, never as a fork
    of the caller: a caller such as pytest holds threads (Arrow's pools, servers, monitors) and
    a fork copies whatever lock one of them holds at that instant, so that a worker can hang, more
    often the busier the machine."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


class _Spill:
    """Rows appended to an Arrow IPC file on disk, so that memory stays flat for big corpora."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows = 0
        self.seconds = 0.0
        self.sentences: set[str] = set()
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, SCHEMA)

    def write(self, utterances: list[Utterance], results: list[tuple[bytes, int]]) -> None:
        columns = {
            "id": [u.id for u in utterances],
            "audio": [
                {"bytes": data, "path": u.id} for u, (data, _) in zip(utterances, results, strict=True)
            ],
            "duration_ms": [ms for _, ms in results],
            "text": [u.text for u in utterances],
        }
        self._writer.write_batch(pa.record_batch(columns, schema=SCHEMA))
        self.rows += len(utterances)
        self.sentences.update(s for u in utterances for s in u.sentences)
        self.seconds += sum(ms for _, ms in results) / 1000

    def close(self) -> pa.Table:
        self._writer.close()
        self._sink.close()
        return pa.ipc.open_file(pa.memory_map(str(self.path))).read_all()


def _write_parquet(table: pa.Table, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(
        table,
        tmp,
        row_group_size=ROW_GROUP_SIZE,
        compression="snappy",
        use_dictionary=["id", "text"],
        write_statistics=True,
        version="2.6",
    )
    os.replace(tmp, path)


def _synthesize_split(
    plan: Iterator[Utterance],
    spill: _Spill,
    pool: ProcessPoolExecutor,
    workers: int,
    what: str,
    total: int | None,
    max_seconds: float | None,
) -> None:
    """Synthesise ``plan`` in order into ``spill``; stop after ``max_seconds`` of audio when set."""
    from components.progress import Progress

    progress = Progress(f"corpus {what} utterances", total, every_s=5.0)
    batch_size = 8
    window = 2 * workers
    pending: list = []
    done = False
    while not done or pending:
        while not done and len(pending) < window:
            batch = [u for _, u in zip(range(batch_size), plan, strict=False)]
            if not batch:
                done = True
                break
            pending.append((batch, pool.submit(_synthesize_batch, batch)))
        if not pending:
            break
        batch, future = pending.pop(0)
        results = future.result()
        if max_seconds is not None:
            keep = []
            for result in results:
                if spill.seconds + sum(ms for _, ms in keep) / 1000 >= max_seconds:
                    break
                keep.append(result)
            if len(keep) < len(results):
                done = True
                for _, later in pending:
                    later.cancel()
                pending = []
            batch, results = batch[: len(keep)], keep
        if results:
            spill.write(batch, results)
            progress.update(len(results), hours=f"{spill.seconds / 3600:.3f}")
    progress.finish()


def generate_corpus(
    out_dir: Path,
    train: int,
    dev: int,
    test: int,
    seed: int,
    train_files: int = 4,
    hours: float | None = None,
    workers: int | None = None,
    splits: tuple[str, ...] = ("train", "validation", "test"),
    voices: str = "mixed",
) -> dict:
    """Write a People's-Speech-shaped corpus under ``out_dir``.

    Args:
        out_dir: the corpus root; parquet files go to ``clean/``, ``validation/``, ``test/``.
        train: train utterances (ignored when ``hours`` is set).
        dev: validation utterances.
        test: test utterances.
        seed: the one seed everything derives from.
        train_files: how many parquet files the train split is cut into.
        hours: when set, train gets as many utterances as make this many hours of audio.
        workers: synthesis processes (default: the CPU count).
        splits: which splits to synthesise. The others are still planned (texts only, which
            is cheap), so a subset gives the same bytes as a full run with the same arguments.
        voices: the voice set, a key of VOICE_SETS (the default mixes espeak-ng and flite).

    Returns:
        Per split: utterances, hours and files; plus seed and the command line.
    """
    if voices not in VOICE_SETS:
        raise ValueError(f"unknown voice set {voices!r}: choose one of {', '.join(VOICE_SETS)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    workers = workers or os.cpu_count() or 1
    counts = {"train": train, "validation": dev, "test": test}
    summary: dict = {"seed": seed, "splits": {}}
    forbidden: set[str] = set()
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=_worker_context())
    with pool, tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        for split, count in counts.items():
            unbounded = split == "train" and hours is not None
            plan = plan_split(seed, split, 10**9 if unbounded else count, frozenset(forbidden), voices)
            if split not in splits:
                if unbounded:
                    raise ValueError("--hours needs the train split synthesised (it decides the count)")
                forbidden.update(s for u in plan for s in u.sentences)
                continue
            spill = _Spill(Path(tmp) / f"{split}.arrow")
            max_seconds = hours * 3600 if unbounded else None
            _synthesize_split(plan, spill, pool, workers, split, None if unbounded else count, max_seconds)
            forbidden.update(spill.sentences)
            table = spill.close()
            files = train_files if split == "train" else 1
            directory, stem = SPLITS[split]
            names = []
            per_file = math.ceil(table.num_rows / files) if table.num_rows else 0
            for index in range(files):
                name = f"{directory}/{stem}-{index:05d}-of-{files:05d}.parquet"
                _write_parquet(table.slice(index * per_file, per_file), out_dir / name)
                names.append(name)
            summary["splits"][split] = {
                "utterances": table.num_rows,
                "hours": round(spill.seconds / 3600, 4),
                "files": names,
            }
            del table
    _write_sums(out_dir)
    _write_readme(out_dir, summary, seed, train, dev, test, train_files, hours, voices)
    return summary


def _write_sums(out_dir: Path) -> None:
    lines = []
    for path in sorted(out_dir.glob("*/*.parquet")):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{digest}  {path.relative_to(out_dir).as_posix()}\n")
    (out_dir / "SHA256SUMS").write_text("".join(lines))


def _write_readme(
    out_dir: Path,
    summary: dict,
    seed: int,
    train: int,
    dev: int,
    test: int,
    train_files: int,
    hours: float | None,
    voices: str = "mixed",
) -> None:
    size = f"--hours {hours}" if hours is not None else f"--train {train}"
    command = (
        f"python -m tests.corpus.generate --out {shlex.quote(str(out_dir))} {size} --dev {dev} "
        f"--test {test} --seed {seed} --train-files {train_files}"
    )
    if voices != "mixed":
        command += f" --voices {voices}"
    summary["command"] = command
    rows = "\n".join(
        f"| {split} | {info['utterances']} | {info['hours']:.3f} | {', '.join(info['files'])} |"
        for split, info in summary["splits"].items()
    )
    front_matter = """---
dataset_info:
  features:
  - name: id
    dtype: string
  - name: audio
    dtype:
      audio:
        sampling_rate: 16000
  - name: duration_ms
    dtype: int32
  - name: text
    dtype: string
configs:
- config_name: clean
  data_files:
  - split: train
    path: clean/train-*
  - split: validation
    path: validation/validation-*
  - split: test
    path: test/test-*
- config_name: validation
  data_files:
  - split: validation
    path: validation/validation-*
- config_name: test
  data_files:
  - split: test
    path: test/test-*
---
"""
    body = f"""
# Synthetic People's Speech

A small corpus with the file layout and parquet schema of `MLCommons/peoples_speech`, made of
speech synthesised by espeak-ng and flite (several voices, rates and pitches) reading
generated English sentences with mixed case and punctuation. Validation and test sentences
never occur verbatim in train. Audio: FLAC, 16 kHz, mono, 16-bit (10 significant bits).

Made by (from the repository root; same seed, same bytes, see `SHA256SUMS`):

    {command}

| split | utterances | hours | files |
|---|---|---|---|
{rows}
"""
    (out_dir / "README.md").write_text(front_matter + body)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.corpus.generate",
        description=(
            "Generate a People's-Speech-shaped corpus (parquet: id, audio{bytes: FLAC 16 kHz "
            "mono, path}, duration_ms, text) of speech synthesised by espeak-ng and flite. "
            "Same arguments and seed give byte-identical files."
        ),
        epilog="Layout: OUT/clean/train-*.parquet, OUT/validation/validation-*, OUT/test/test-*.",
    )
    parser.add_argument("--out", type=Path, required=True, help="corpus root directory")
    parser.add_argument("--train", type=int, default=300, help="train utterances (default 300)")
    parser.add_argument("--dev", type=int, default=60, help="validation utterances (default 60)")
    parser.add_argument("--test", type=int, default=60, help="test utterances (default 60)")
    parser.add_argument("--seed", type=int, default=0, help="the seed everything derives from (default 0)")
    parser.add_argument("--train-files", type=int, default=4, help="parquet files for train (default 4)")
    parser.add_argument(
        "--hours", type=float, help="make train this many hours of audio instead of --train utterances"
    )
    parser.add_argument("--workers", type=int, help="synthesis processes (default: CPU count)")
    parser.add_argument(
        "--voices",
        choices=list(VOICE_SETS),
        default="mixed",
        help="; ".join(f"{name}: {what}" for name, what in VOICE_SETS.items()).replace("%", "%%")
        + " (default mixed)",
    )
    args = parser.parse_args(argv)
    if args.train_files < 1:
        parser.error("--train-files must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = generate_corpus(
        args.out,
        args.train,
        args.dev,
        args.test,
        args.seed,
        train_files=args.train_files,
        hours=args.hours,
        workers=args.workers,
        voices=args.voices,
    )
    json.dump(summary, sys.stdout, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()

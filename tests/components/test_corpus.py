"""The corpus generator: hub schema and layout, real decodable audio, determinism, held-out."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from components.manifest import normalize_text
from tests.corpus import generate, text
from tests.fixtures.corpus import BUNDLED_ARGS

EXPECTED_FILES = [
    "clean/train-00000-of-00004.parquet",
    "clean/train-00001-of-00004.parquet",
    "clean/train-00002-of-00004.parquet",
    "clean/train-00003-of-00004.parquet",
    "test/test-00000-of-00001.parquet",
    "validation/validation-00000-of-00001.parquet",
]


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.parquet"))


def _rows(root: Path, pattern: str) -> list[dict]:
    rows: list[dict] = []
    for path in sorted(root.glob(pattern)):
        rows.extend(pq.read_table(path).to_pylist())
    return rows


def _sentences(line: str) -> list[str]:
    return re.split(r"(?<=[.?!])\s+", line)


def test_bundled_layout_and_schema(bundled_corpus: Path) -> None:
    assert _files(bundled_corpus) == EXPECTED_FILES
    for name in EXPECTED_FILES:
        schema = pq.read_schema(bundled_corpus / name)
        assert schema.names == ["id", "audio", "duration_ms", "text"], name
        assert str(schema.field("id").type) == "string"
        assert str(schema.field("audio").type) == "struct<bytes: binary, path: string>"
        assert str(schema.field("duration_ms").type) == "int32"
        assert str(schema.field("text").type) == "string"
        features = json.loads(schema.metadata[b"huggingface"])["info"]["features"]
        assert features["audio"] == {"_type": "Audio", "sampling_rate": 16000}
    counts = {
        split: len(_rows(bundled_corpus, f"{d}/*.parquet")) for split, (d, _) in generate.SPLITS.items()
    }
    assert counts == {"train": 300, "validation": 60, "test": 60}


def test_bundled_audio_is_16k_mono_flac_matching_duration(bundled_corpus: Path) -> None:
    rows = _rows(bundled_corpus, "*/*.parquet")
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        assert row["audio"]["path"] == row["id"]
        data = row["audio"]["bytes"]
        info = sf.info(io.BytesIO(data))
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1), row["id"]
        audio, rate = sf.read(io.BytesIO(data), dtype="int16")
        assert abs(len(audio) * 1000 / rate - row["duration_ms"]) <= 1, row["id"]
        assert generate.MIN_SECONDS * 1000 <= row["duration_ms"] <= generate.MAX_SECONDS * 1000
        assert audio.std() > 100, f"{row['id']} is (nearly) silent"


def test_bundled_text_mixed_case_punctuation_and_vocabulary(bundled_corpus: Path) -> None:
    texts = [row["text"] for row in _rows(bundled_corpus, "*/*.parquet")]
    joined = " ".join(texts)
    for mark in (",", ".", "?", "'", '"', "-", "!"):
        assert mark in joined, f"no {mark!r} in the corpus text"
    assert any(word[0].isupper() and word[1:].islower() for word in joined.split()[1:])
    vocabulary = text.vocabulary()
    assert 300 <= len(vocabulary) <= 700
    spoken = {word for line in texts for word in normalize_text(line).split()}
    # hyphenated words normalise to two words; both halves come from the vocabulary lists
    halves = {half for word in vocabulary for half in word.split("-")}
    assert spoken <= vocabulary | halves, sorted(spoken - vocabulary - halves)[:10]
    assert len(spoken) > 250


def test_bundled_dev_and_test_are_held_out_from_train(bundled_corpus: Path) -> None:
    train = {s for row in _rows(bundled_corpus, "clean/*.parquet") for s in _sentences(row["text"])}
    for pattern in ("validation/*.parquet", "test/*.parquet"):
        held_out = {s for row in _rows(bundled_corpus, pattern) for s in _sentences(row["text"])}
        assert held_out and not held_out & train, sorted(held_out & train)[:3]


def test_bundled_checksums_match(bundled_corpus: Path) -> None:
    sums = (bundled_corpus / "SHA256SUMS").read_text().splitlines()
    assert [line.split("  ")[1] for line in sums] == EXPECTED_FILES
    for line in sums:
        digest, name = line.split("  ")
        assert hashlib.sha256((bundled_corpus / name).read_bytes()).hexdigest() == digest, name
    readme = (bundled_corpus / "README.md").read_text()
    assert "--train 300 --dev 60 --test 60 --seed 0 --train-files 4" in readme


def test_bundled_corpus_is_what_the_generator_makes(bundled_corpus: Path, tmp_path: Path) -> None:
    """Regenerate the validation split from the bundled arguments: the same bytes."""
    args = dict(BUNDLED_ARGS)
    generate.generate_corpus(
        tmp_path,
        args.pop("train"),
        args.pop("dev"),
        args.pop("test"),
        args.pop("seed"),
        splits=("validation",),
        **args,
    )
    name = "validation/validation-00000-of-00001.parquet"
    assert (tmp_path / name).read_bytes() == (bundled_corpus / name).read_bytes(), (
        "the generator no longer makes the bundled corpus: if the generator changed on purpose, "
        "run `make corpus` and commit; otherwise espeak-ng or flite differ from the versions used"
    )


def test_same_seed_same_bytes_any_worker_count(make_corpus) -> None:
    first = make_corpus(train=10, dev=3, test=3, seed=7, name="a", workers=1)
    second = make_corpus(train=10, dev=3, test=3, seed=7, name="b", workers=2)
    other = make_corpus(train=10, dev=3, test=3, seed=8, name="c", splits=("validation",))
    assert (
        _files(first)
        == _files(second)
        == [
            "clean/train-00000-of-00002.parquet",
            "clean/train-00001-of-00002.parquet",
            "test/test-00000-of-00001.parquet",
            "validation/validation-00000-of-00001.parquet",
        ]
    )
    for name in _files(first):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "SHA256SUMS").read_text() == (second / "SHA256SUMS").read_text()
    name = "validation/validation-00000-of-00001.parquet"
    assert (first / name).read_bytes() != (other / name).read_bytes()


def test_hours_mode_stops_at_the_first_utterance_past_the_target(make_corpus) -> None:
    target_hours = 0.004  # 14.4 s
    root = make_corpus(train=0, dev=1, test=1, seed=3, train_files=1, hours=target_hours)
    durations = [row["duration_ms"] for row in _rows(root, "clean/*.parquet")]
    assert sum(durations) >= target_hours * 3600 * 1000
    assert sum(durations[:-1]) < target_hours * 3600 * 1000


def test_cli_help_and_run(tmp_path: Path) -> None:
    help_text = subprocess.run(
        [sys.executable, "-m", "tests.corpus.generate", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for option in ("--out", "--train", "--dev", "--test", "--seed", "--train-files", "--hours"):
        assert option in help_text
    result = subprocess.run(
        [sys.executable, "-m", "tests.corpus.generate", "--out", str(tmp_path), "--train", "4", "--dev", "2"]
        + ["--test", "2", "--train-files", "2", "--seed", "1"],
        capture_output=True,
        text=True,
        check=True,
    )
    summary = json.loads(result.stdout.splitlines()[-1])
    counts = {split: info["utterances"] for split, info in summary["splits"].items()}
    assert counts == {"train": 4, "validation": 2, "test": 2}
    assert "corpus train utterances: 4/4" in result.stderr


@pytest.mark.parametrize("bad", [["--train-files", "0"], ["--train", "x"]])
def test_cli_rejects_bad_arguments(tmp_path: Path, bad: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tests.corpus.generate", "--out", str(tmp_path), *bad],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and "error:" in result.stderr


def _voices_of(voices: str, split: str = "train", count: int = 300) -> set[tuple[str, str]]:
    plan = generate.plan_split(0, split, count, frozenset(), voices)
    return {(u.speaker.engine, u.speaker.voice) for u in plan}


def test_voice_sets_keep_apart_what_the_pretrained_model_heard() -> None:
    """The pretrained model learns espeak-unheard; the bundled (mixed) corpus and the fine-tuning
    benchmark (flite) must use none of its voices."""
    mixed = _voices_of("mixed")
    unheard = _voices_of("espeak-unheard")
    flite = _voices_of("flite")
    assert {engine for engine, _ in mixed} == {"espeak", "flite"}
    assert {engine for engine, _ in unheard} == {"espeak"}
    assert {engine for engine, _ in flite} == {"flite"}
    assert all(voice.endswith(generate.UNHEARD_ESPEAK_VARIANTS) for _, voice in unheard)
    assert not unheard & mixed and not unheard & flite
    assert len({voice[voice.index("+") :] for _, voice in unheard}) >= 4  # several variants drawn


def test_unknown_voice_set_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown voice set 'klingon'"):
        generate.generate_corpus(tmp_path, train=1, dev=1, test=1, seed=0, voices="klingon")

"""asrflow download: local, gs:// (emulator) and manifest sources; resumability; errors; CLI."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import yaml
from click.testing import CliRunner

from components import cards, storage
from components.columns import Columns
from components.download import checksums, core
from components.download.cli import download as download_command
from components.download.data_files import choose_config, glob_regex, readme_configs, select_files
from components.download.errors import DownloadError
from components.download.files import DownloadRequest, SourceFile, content_revision
from components.download.hub import parse_hub_source
from components.download.plan import make_plan, source_kind
from components.download.transfer import MB, Transfer
from pipelines.cli import main as asrflow_main

CORPUS = Path(__file__).resolve().parents[1] / "data" / "peoples_speech"
TRAIN_FILES = [f"clean/train-0000{i}-of-00004.parquet" for i in range(4)]

PEOPLES_SPEECH_README = """---
configs:
- config_name: clean
  data_files:
  - split: train
    path: clean/train-*
  - split: validation
    path: clean/validation-*
  - split: test
    path: clean/test-*
- config_name: microset
  data_files:
  - split: train
    path: microset/train-*
- config_name: validation
  data_files:
  - split: validation
    path: validation/validation-*
- config_name: test
  data_files:
  - split: test
    path: test/test-*
---
# People's Speech
"""


# --- tiny datasets the tests make --------------------------------------------------------


def flac(seconds: float, frequency: float = 220.0, rate: int = 16000) -> bytes:
    t = np.arange(round(seconds * rate)) / rate
    buffer = io.BytesIO()
    soundfile.write(buffer, (0.3 * np.sin(2 * np.pi * frequency * t)).astype(np.float32), rate, format="FLAC")
    return buffer.getvalue()


AUDIO_TYPE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def write_ps_parquet(path: Path, seconds: list[float], prefix: str = "utt", drop: str | None = None) -> None:
    """A People's-Speech-shaped parquet file (id, audio, duration_ms, text), optionally lacking a column."""
    columns = {
        "id": pa.array([f"{prefix}-{i}" for i in range(len(seconds))], pa.string()),
        "audio": pa.array(
            [{"bytes": flac(s, 200 + 10 * i), "path": f"{prefix}-{i}.flac"} for i, s in enumerate(seconds)],
            AUDIO_TYPE,
        ),
        "duration_ms": pa.array([round(s * 1000) for s in seconds], pa.int32()),
        "text": pa.array([f"Words number {i}." for i in range(len(seconds))], pa.string()),
    }
    if drop:
        del columns[drop]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)


def write_librispeech_parquet(path: Path, seconds: list[float]) -> None:
    """LibriSpeech as the hub has it: file, audio, text, speaker_id, chapter_id, id; no duration."""
    n = len(seconds)
    table = pa.table(
        {
            "file": pa.array([f"1-2-{i:04d}.flac" for i in range(n)]),
            "audio": pa.array(
                [{"bytes": flac(s), "path": f"1-2-{i:04d}.flac"} for i, s in enumerate(seconds)], AUDIO_TYPE
            ),
            "text": pa.array(["HELLO WORLD"] * n),
            "speaker_id": pa.array([1] * n, pa.int64()),
            "chapter_id": pa.array([2] * n, pa.int64()),
            "id": pa.array([f"1-2-{i:04d}" for i in range(n)]),
        }
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def corpus_copy(tmp_path: Path) -> Path:
    root = tmp_path / "peoples_speech"
    shutil.copytree(CORPUS, root)
    return root


def upload_tree(local_root: Path, uri: str) -> None:
    for path in sorted(local_root.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(uri, path.relative_to(local_root).as_posix()))


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def snapshot(root: str) -> dict[str, str]:
    """Relative path -> MD5 of every file below ``root`` (local or gs://), read back in full."""
    prefix = root.rstrip("/") + "/" if storage.is_gcs(root) else root + os.sep
    return {
        info.uri[len(prefix) :].replace(os.sep, "/"): md5(storage.read_bytes(info.uri))
        for info in storage.list_files(root)
    }


def train_hours() -> float:
    total_ms = sum(
        sum(pq.read_table(CORPUS / name, columns=["duration_ms"]).column(0).to_pylist())
        for name in TRAIN_FILES
    )
    return round(total_ms / 1000 / 3600, 6)


# --- choosing files ----------------------------------------------------------------------


def test_select_files_follows_the_dataset_card() -> None:
    configs = readme_configs(PEOPLES_SPEECH_README)
    paths = [
        "README.md",
        "clean/train-00000-of-00002.parquet",
        "clean/train-00001-of-00002.parquet",
        "clean/validation-00000-of-00001.parquet",
        "microset/train-00000-of-00001.parquet",
        "validation/validation-00000-of-00001.parquet",
        "test/test-00000-of-00001.parquet",
    ]
    assert select_files(paths, "clean", "train", configs) == paths[1:3]
    assert select_files(paths, "validation", "validation", configs) == [paths[5]]
    with pytest.raises(
        DownloadError, match="config 'dirty' is not in the dataset card; it has clean, microset"
    ):
        select_files(paths, "dirty", "train", configs)
    with pytest.raises(DownloadError, match="config 'microset' has no split 'test'; it has train"):
        select_files(paths, "microset", "test", configs)
    with pytest.raises(
        DownloadError,
        match=r"no parquet files .*clean/test-\*.*clean/train-\*-of-\*.parquet \(2 files\)",
    ):
        select_files(paths, "clean", "test", configs)
    with pytest.raises(DownloadError, match="give --config: the dataset card lists configs clean, microset"):
        choose_config(configs, paths)


def test_select_files_without_a_card_and_with_a_pattern() -> None:
    paths = [
        "clean/train-00000-of-00001.parquet",
        "clean/train/extra/0001.parquet",
        "clean/trainee-00000-of-00001.parquet",
        "all/test.clean/0000.parquet",
        "all/test.clean/0001.parquet",
        "all/test.other/0000.parquet",
        "notes.txt",
    ]
    assert select_files(paths, "clean", "train") == [
        "clean/train-00000-of-00001.parquet",
        "clean/train/extra/0001.parquet",
    ]
    assert select_files(paths, "all", "test.clean", pattern="{config}/{split}/*.parquet") == [
        "all/test.clean/0000.parquet",
        "all/test.clean/0001.parquet",
    ]
    with pytest.raises(
        DownloadError, match=r"all/test.clean/\*.parquet \(2 files\), all/test.other/\*.parquet"
    ):
        select_files(paths, "all", "train")
    with pytest.raises(DownloadError, match="give --config: found"):
        choose_config(None, paths)
    assert choose_config(None, ["data/train-00000-of-00001.parquet"]) == "default"
    assert select_files(["data/train-00000-of-00001.parquet"], "default", "train") == [
        "data/train-00000-of-00001.parquet"
    ]
    assert choose_config(None, ["clean/a.parquet", "clean/b.parquet"]) == "clean"


def test_glob_semantics() -> None:
    assert glob_regex("clean/train-*").match("clean/train-00000-of-00004.parquet")
    assert not glob_regex("clean/*.parquet").match("clean/sub/x.parquet")
    assert glob_regex("clean/**/*.parquet").match("clean/sub/deeper/x.parquet")
    assert glob_regex("clean/**/*.parquet").match("clean/x.parquet")
    assert not glob_regex("a?c").match("a/c")
    assert not glob_regex("a.b").match("axb")


def test_source_kinds_and_names() -> None:
    assert source_kind("hf://datasets/MLCommons/peoples_speech") == "hub"
    assert source_kind("gs://bucket/ps") == "gcs"
    assert source_kind("/data/ps") == "local"
    assert source_kind("gs://bucket/dev.json") == "manifest"
    assert source_kind("dev_clean.jsonl") == "manifest"
    with pytest.raises(DownloadError, match=r"unknown source scheme s3:// in 's3://b/x'; expected hf://"):
        source_kind("s3://b/x")
    with pytest.raises(DownloadError, match="use hf://datasets/OWNER/NAME"):
        source_kind("hf://models/nvidia/parakeet")
    assert parse_hub_source("hf://datasets/MLCommons/peoples_speech") == (
        "MLCommons/peoples_speech",
        None,
    )
    assert parse_hub_source("hf://datasets/openslr/librispeech_asr@refs/convert/parquet") == (
        "openslr/librispeech_asr",
        "refs/convert/parquet",
    )
    with pytest.raises(DownloadError, match="not a hub dataset"):
        parse_hub_source("hf://datasets/just-a-name")


def test_dataset_key() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert (
        core.dataset_key("MLCommons/peoples_speech", "clean", "train", sha)
        == f"datasets/MLCommons--peoples_speech/clean/train/{sha}/raw"
    )
    with pytest.raises(DownloadError, match="cannot use ''"):
        core.dataset_key("ps", "", "train", sha)
    with pytest.raises(DownloadError, match="cannot use '..'"):
        core.dataset_key("ps", "clean", "..", sha)


def test_checksum_algorithms_match_their_definitions(tmp_path: Path) -> None:
    data = b"hello hub\n"
    path = tmp_path / "f"
    path.write_bytes(data)
    # git's blob id, as the hub reports it for files not in LFS ("git hash-object").
    git = subprocess.run(
        ["git", "hash-object", str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert checksums.hash_uri(str(path), "git-sha1", len(data)) == git
    assert checksums.hash_uri(str(path), "sha256", len(data)) == hashlib.sha256(data).hexdigest()
    assert checksums.hash_uri(str(path), "md5", len(data)) == md5(data)
    assert checksums.hash_uri(str(path), "crc32c", len(data)) == storage.file_crc32c(path)


# --- local sources -----------------------------------------------------------------------


def test_download_bundled_corpus(tmp_path: Path) -> None:
    out = tmp_path / "out"
    card = core.download(str(CORPUS), str(out), config="clean", split="train", workers=2).to_dict()
    for name in TRAIN_FILES:
        assert (out / name).read_bytes() == (CORPUS / name).read_bytes()
    expected_revision = content_revision(
        SourceFile(name, "", (CORPUS / name).stat().st_size, "md5", md5((CORPUS / name).read_bytes()))
        for name in TRAIN_FILES
    )
    assert card == {
        "step": "download",
        "source": str(CORPUS),
        "dataset": "peoples_speech",
        "config": "clean",
        "split": "train",
        "revision": expected_revision,
        "format": "parquet",
        "out_dir": str(out),
        "files": TRAIN_FILES,
        "num_files": 4,
        "bytes": sum((CORPUS / name).stat().st_size for name in TRAIN_FILES),
        "rows": 300,
        "hours": train_hours(),
        "columns": {"id": "id", "audio": "audio", "text": "text", "duration": "duration_ms"},
        "duration_unit": "ms",
    }
    assert cards.read_card(str(out)) == card
    assert storage.is_complete(str(out))
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == sorted(
        [*TRAIN_FILES, "card.json", "_SUCCESS", "_ASRFLOW"]
    )
    assert (out / "_ASRFLOW").read_text() == '{"step": "download"}\n'


def test_card_config_maps_validation_split(tmp_path: Path) -> None:
    card = core.download(
        str(CORPUS), str(tmp_path / "dev"), config="clean", split="validation", workers=1
    ).to_dict()
    assert card["files"] == ["validation/validation-00000-of-00001.parquet"]
    assert card["rows"] == 60


def test_revision_is_a_content_hash(tmp_path: Path) -> None:
    root = corpus_copy(tmp_path)
    request = DownloadRequest(str(root), config="clean", split="train")
    first = make_plan(request)
    assert make_plan(request).revision == first.revision
    assert make_plan(request, source=str(CORPUS)).revision == first.revision  # same bytes, same key
    data = (root / TRAIN_FILES[2]).read_bytes()
    (root / TRAIN_FILES[2]).write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    changed = make_plan(request)
    assert changed.revision != first.revision
    with pytest.raises(DownloadError, match=f"--revision {first.revision} was asked for"):
        make_plan(request, revision=first.revision)
    assert make_plan(request, revision=changed.revision).revision == changed.revision


def test_download_request_is_checked_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty strings (the KFP parameters' "not given") mean None; the token stays out of the repr."""
    request = DownloadRequest("src", config="", revision="", pattern="", dataset="", token="hf_secret")
    assert (request.config, request.revision, request.pattern, request.dataset) == (None, None, None, None)
    assert "hf_secret" not in repr(request)
    assert DownloadRequest.of("src", split="test") == DownloadRequest("src", split="test")
    assert DownloadRequest.of(request) is request
    assert DownloadRequest.of(request, split="test").split == "test"
    with pytest.raises(DownloadError, match="--workers must be at least 1, not 0"):
        DownloadRequest("src", workers=0)
    with pytest.raises(DownloadError, match="--workers must be at least 1, not 0"):
        core.download(str(CORPUS), "unused", workers=0)
    monkeypatch.setenv("HF_TOKEN", "hf_env")
    assert (request.hub_token, DownloadRequest("src").hub_token) == ("hf_secret", "hf_env")
    monkeypatch.setenv("HF_TOKEN", "")
    assert DownloadRequest("src").hub_token is None


def test_data_root_key(tmp_path: Path) -> None:
    card = core.download(str(CORPUS), data_root=str(tmp_path / "root"), config="test", split="test").to_dict()
    key = core.dataset_key("peoples_speech", "test", "test", card["revision"])
    assert card["out_dir"] == str(tmp_path / "root" / key)
    assert storage.is_complete(card["out_dir"])
    with pytest.raises(DownloadError, match="give --out DIR or --data-root ROOT"):
        core.download(str(CORPUS), config="test", split="test")


def test_rerun_skips_complete_files_and_redoes_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "out"
    first = core.download(str(CORPUS), str(out), config="clean", split="train", workers=2).to_dict()
    before = snapshot(str(out))
    untouched = out / TRAIN_FILES[0]
    os.utime(untouched, (1_000_000_000, 1_000_000_000))
    # A file cut short, a file of the right size with a flipped byte, and a killed run's temp file.
    truncated = out / TRAIN_FILES[1]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    flipped = out / TRAIN_FILES[3]
    data = flipped.read_bytes()
    flipped.write_bytes(data[:5000] + bytes([data[5000] ^ 0xFF]) + data[5001:])
    stale = out / "clean" / ".tmp-train-00002-of-00004.parquet.x1y2"
    stale.write_bytes(b"half a file")
    with caplog.at_level(logging.INFO, logger="asrflow.download"):
        second = core.download(str(CORPUS), str(out), config="clean", split="train", workers=2).to_dict()
    assert second == first
    assert snapshot(str(out)) == before
    assert not stale.exists()
    assert untouched.stat().st_mtime == 1_000_000_000  # verified, not copied again
    assert "2 of 4 files already complete and verified" in caplog.text
    assert "removed 1 temporary file(s)" in caplog.text
    assert "download: 2/2 files" in caplog.text


def test_missing_column_is_named(tmp_path: Path) -> None:
    root = tmp_path / "src"
    write_ps_parquet(root / "clean" / "train-00000-of-00002.parquet", [0.5, 0.7])
    write_ps_parquet(root / "clean" / "train-00001-of-00002.parquet", [0.5], drop="text")
    with pytest.raises(DownloadError) as err:
        core.download(str(root), str(tmp_path / "out"), config="clean", split="train")
    message = str(err.value)
    assert (
        "train-00001-of-00002.parquet: no column 'text' (the text column; set it with --text-column)"
        in message
    )
    assert "the file has columns id, audio, duration_ms" in message
    assert not storage.is_complete(str(tmp_path / "out"))
    # A wrong mapping fails on the source's first file, before anything is copied.
    with pytest.raises(DownloadError, match=r"src/clean/train-00000-of-00002.parquet: no column 'sentence'"):
        core.download(str(root), str(tmp_path / "out3"), config="clean", columns=Columns(text="sentence"))
    assert not (tmp_path / "out3").exists()
    with pytest.raises(DownloadError, match="no column 'seconds' \\(the duration column"):
        core.download(
            str(root),
            str(tmp_path / "out2"),
            config="clean",
            split="train",
            columns=Columns(duration="seconds"),
        )


def test_no_matching_files_lists_what_exists(tmp_path: Path) -> None:
    with pytest.raises(
        DownloadError, match="config 'dirty' is not in the dataset card; it has clean, validation, test"
    ):
        core.download(str(CORPUS), str(tmp_path / "o"), config="dirty")
    root = tmp_path / "nocard"
    write_ps_parquet(root / "clean" / "train-00000-of-00001.parquet", [0.3])
    write_ps_parquet(root / "clean" / "test-00000-of-00001.parquet", [0.3])
    with pytest.raises(DownloadError) as err:
        core.download(str(root), str(tmp_path / "o"), config="clean", split="validation")
    assert "no parquet files for config 'clean', split 'validation'" in str(err.value)
    assert "clean/test-*-of-*.parquet (1 file), clean/train-*-of-*.parquet (1 file)" in str(err.value)
    with pytest.raises(DownloadError, match="no such directory"):
        core.download(str(tmp_path / "missing"), str(tmp_path / "o"))


def test_librispeech_layout_without_duration_column(tmp_path: Path) -> None:
    root = tmp_path / "librispeech_asr"
    write_librispeech_parquet(root / "all" / "test.clean" / "0000.parquet", [1.0, 2.5])
    write_librispeech_parquet(root / "all" / "test.clean" / "0001.parquet", [0.5])
    write_librispeech_parquet(root / "all" / "test.other" / "0000.parquet", [9.0])
    card = core.download(
        str(root),
        str(tmp_path / "out"),
        config="all",
        split="test.clean",
        pattern="{config}/{split}/*.parquet",
        columns=Columns(id="file"),
    ).to_dict()
    assert card["files"] == ["all/test.clean/0000.parquet", "all/test.clean/0001.parquet"]
    assert card["rows"] == 3
    assert card["hours"] == round(4.0 / 3600, 6)
    assert card["columns"] == {"id": "file", "audio": "audio", "text": "text", "duration": None}
    assert card["duration_unit"] is None
    assert card["audio_unreadable"] == 0


# --- gs:// against the emulator ----------------------------------------------------------


def test_gcs_source_and_destination(gcs_bucket: str, tmp_path: Path) -> None:
    source = f"{gcs_bucket}/mirror/peoples_speech"
    upload_tree(CORPUS, source)
    local = core.download(str(CORPUS), str(tmp_path / "local"), config="clean", split="train").to_dict()
    # gs:// -> gs:// (copied by the server), gs:// -> local, local -> gs://
    cases = {
        "gs-gs": (source, f"{gcs_bucket}/out/gs"),
        "gs-local": (source, str(tmp_path / "from-gs")),
        "local-gs": (str(CORPUS), f"{gcs_bucket}/out/local"),
    }
    expected = {name: md5((CORPUS / name).read_bytes()) for name in TRAIN_FILES}
    for src, out in cases.values():
        card = core.download(src, out, config="clean", split="train", workers=3).to_dict()
        files = snapshot(out)
        card_text = files.pop("card.json")
        assert files.pop("_SUCCESS") == md5(b"")
        assert files.pop("_ASRFLOW") == md5(b'{"step": "download"}\n')
        assert files == expected
        assert card_text == md5(storage.read_bytes(storage.join(out, "card.json")))
        # Same bytes, same revision, whichever store they come from.
        assert {k: v for k, v in card.items() if k not in ("source", "out_dir")} == {
            k: v for k, v in local.items() if k not in ("source", "out_dir")
        }
        assert card["out_dir"] == out
    rerun = core.download(source, f"{gcs_bucket}/out/gs", config="clean", split="train").to_dict()
    assert rerun["revision"] == local["revision"]


def test_gcs_rerun_replaces_a_corrupt_object(gcs_bucket: str, caplog: pytest.LogCaptureFixture) -> None:
    out = f"{gcs_bucket}/out"
    core.download(str(CORPUS), out, config="test", split="test")
    target = storage.join(out, "test/test-00000-of-00001.parquet")
    storage.write_bytes(target, b"not parquet at all")
    with caplog.at_level(logging.INFO, logger="asrflow.download"):
        card = core.download(str(CORPUS), out, config="test", split="test").to_dict()
    assert "0 of 1 files already complete" in caplog.text
    assert storage.read_bytes(target) == (CORPUS / "test/test-00000-of-00001.parquet").read_bytes()
    assert card["rows"] == 60


# --- manifests ---------------------------------------------------------------------------


def write_manifest_set(root: Path) -> Path:
    (root / "wavs" / "a").mkdir(parents=True)
    (root / "elsewhere").mkdir()
    (root / "wavs" / "a" / "one.flac").write_bytes(flac(1.5))
    (root / "wavs" / "two.flac").write_bytes(flac(0.5, 300))
    (root / "elsewhere" / "three.flac").write_bytes(flac(1.0, 400))
    lines = [
        {"audio_filepath": "wavs/a/one.flac", "duration": 1.5, "text": "One!", "speaker": 7},
        {"audio_filepath": str(root / "wavs" / "two.flac"), "duration": 0.5, "text": "two"},
        {"audio_filepath": "elsewhere/three.flac", "duration": 0.6, "text": "three", "offset": 0.0},
        {"audio_filepath": "elsewhere/three.flac", "duration": 0.4, "text": "four", "offset": 0.6},
    ]
    path = root / "dev.json"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_manifest_source(tmp_path: Path) -> None:
    source = write_manifest_set(tmp_path / "src")
    out = tmp_path / "out"
    card = core.download(str(source), str(out), split="validation").to_dict()
    entries = [json.loads(line) for line in (out / "manifest.json").read_text().splitlines()]
    assert entries == [
        {"audio_filepath": "audio/wavs/a/one.flac", "duration": 1.5, "text": "One!", "speaker": 7},
        {"audio_filepath": "audio/wavs/two.flac", "duration": 0.5, "text": "two"},
        {"audio_filepath": "audio/elsewhere/three.flac", "duration": 0.6, "text": "three", "offset": 0.0},
        {"audio_filepath": "audio/elsewhere/three.flac", "duration": 0.4, "text": "four", "offset": 0.6},
    ]
    for relative in ("wavs/a/one.flac", "wavs/two.flac", "elsewhere/three.flac"):
        assert (out / "audio" / relative).read_bytes() == (tmp_path / "src" / relative).read_bytes()
    assert card["format"] == "manifest"
    assert card["files"] == ["manifest.json"]
    assert card["audio_files"] == 3
    assert card["rows"] == 4
    assert card["hours"] == round(3.0 / 3600, 6)
    assert card["dataset"] == "dev"
    assert card["split"] == "validation"
    assert card["bytes"] == sum(p.stat().st_size for p in (tmp_path / "src").rglob("*.flac"))
    assert core.download(str(source), str(out), split="validation").to_dict() == card


def test_manifest_source_to_gcs(tmp_path: Path, gcs_bucket: str) -> None:
    source = write_manifest_set(tmp_path / "src")
    local = core.download(str(source), str(tmp_path / "out")).to_dict()
    remote = core.download(str(source), f"{gcs_bucket}/dev").to_dict()
    assert remote["revision"] == local["revision"]
    assert (
        storage.read_text(f"{gcs_bucket}/dev/manifest.json")
        == (tmp_path / "out" / "manifest.json").read_text()
    )
    assert (
        storage.read_bytes(f"{gcs_bucket}/dev/audio/wavs/two.flac")
        == (tmp_path / "src/wavs/two.flac").read_bytes()
    )


def test_manifest_with_missing_audio_names_the_line(tmp_path: Path) -> None:
    source = write_manifest_set(tmp_path / "src")
    (tmp_path / "src" / "elsewhere" / "three.flac").unlink()
    with pytest.raises(DownloadError, match=r"dev.json:3: audio file not found: .*elsewhere/three.flac"):
        core.download(str(source), str(tmp_path / "out"))


def test_progress_lines_and_rate_cap() -> None:
    transfer = Transfer(total_files=4, total_bytes=8 * MB, max_mbps=20)
    started = time.monotonic()
    transfer.add_bytes(2 * MB)
    transfer.file_done()
    assert time.monotonic() - started >= 0.099  # 2 MB at no more than 20 MB/s
    line = transfer.line()
    assert line.startswith("download: 1/4 files, 2.0/8.0 MB (25%), ")
    assert " MB/s, ETA " in line
    assert "done in" in transfer.line(final=True)


# --- the command line --------------------------------------------------------------------


def test_cli_help_explains() -> None:
    result = CliRunner().invoke(asrflow_main, ["download", "--help"])
    assert result.exit_code == 0, result.output
    for text in ("hf://datasets/OWNER/NAME", "--config", "--split", "--revision", "--workers", "--out",
                 "--data-root", "--id-column", "--audio-column", "--text-column", "--duration-column",
                 "--pattern", "HF_TOKEN", "_SUCCESS", "last line of stdout"):  # fmt: skip
        assert text in result.output


def test_cli_prints_the_card_last(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = CliRunner().invoke(
        download_command,
        [str(CORPUS), "--out", str(out), "--config", "validation", "--split", "validation", "--workers", "2"],
    )
    assert result.exit_code == 0, result.output
    last = result.stdout.strip().splitlines()[-1]
    assert json.loads(last) == json.loads((out / "card.json").read_text())
    assert json.loads(last)["rows"] == 60


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    result = CliRunner().invoke(download_command, ["ftp://host/data", "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "Error: unknown source scheme ftp://" in result.output
    result = CliRunner().invoke(
        download_command, [str(CORPUS), "--out", str(tmp_path / "o"), "--config", "clean", "--split", "dev"]
    )
    assert result.exit_code == 1
    assert "config 'clean' has no split 'dev'; it has train, validation, test" in result.output


# --- output directories -------------------------------------------------------------------


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_directory_holding_other_files_is_refused(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """A download into someone's directory used to mix its files into the dataset, exit 0."""
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    out = storage.join(base, "home")
    storage.write_text(storage.join(out, "thesis", "draft.tex"), "months of work\n")
    result = CliRunner().invoke(download_command, [str(CORPUS), "--out", out, "--config", "clean"])
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: download: {out} is not empty and holds no download run of asrflow (it has "
        "thesis/draft.tex, and no _ASRFLOW marker); write to an empty or new directory, or empty this one"
    )
    assert [info.uri for info in storage.list_files(out)] == [storage.join(out, "thesis", "draft.tex")]
    # write-shards' output is not a download's either
    storage.write_text(storage.join(base, "tarred", "_ASRFLOW"), '{"step": "write-shards"}\n')
    with pytest.raises(DownloadError, match="holds the output of write-shards, not of download"):
        core.download(str(CORPUS), storage.join(base, "tarred"), config="clean")


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_second_download_into_the_same_directory_fails_at_once(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    out = storage.join(base, "raw")
    command = [_asrflow(), "download", str(CORPUS), "--out", out, "--config", "clean", "--workers", "2"]
    # 8 MB at 2 MB/s: about four seconds of copying
    first = subprocess.Popen(
        [*command, "--max-mbps", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not [n for n in _listing(out) if n.endswith(".parquet") and "/.tmp-" not in f"/{n}"]:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert second.returncode == 1, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(f"Error: download: {out} is being written by another run (download on host ")
        assert f"pid {first.pid}, since " in last
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["rows"] == 300
    assert _listing(out) == sorted([*TRAIN_FILES, "card.json", "_SUCCESS", "_ASRFLOW"])
    for name in TRAIN_FILES:
        assert storage.read_bytes(storage.join(out, name)) == (CORPUS / name).read_bytes()


# --- kill and rerun ----------------------------------------------------------------------


def _asrflow() -> str:
    return str(Path(sys.executable).with_name("asrflow"))


def _listing(out: str) -> list[str]:
    if storage.is_gcs(out):
        bucket, prefix = storage.split_gcs(out)
        return sorted(
            blob.name[len(prefix) + 1 :]
            for blob in storage.gcs_client().list_blobs(bucket, prefix=prefix + "/")
        )
    return sorted(str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file())


@pytest.mark.parametrize("where", ["gcs", "local"])
def test_killed_download_reruns_to_the_same_bytes(
    where: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    if where == "gcs":
        base = request.getfixturevalue("gcs_bucket")
    else:
        base = str(tmp_path)
    reference, out = storage.join(base, "reference"), storage.join(base, "killed")
    expected = core.download(str(CORPUS), reference, config="clean", split="train", workers=2).to_dict()
    command = [
        _asrflow(),
        "download",
        str(CORPUS),
        "--out",
        out,
        "--config",
        "clean",
        "--split",
        "train",
        "--workers",
        "2",
    ]
    # 8 MB at 4 MB/s: about two seconds of copying to interrupt.
    process = subprocess.Popen(
        [*command, "--max-mbps", "4"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    try:
        while True:
            done = [
                name for name in _listing(out) if name.endswith(".parquet") and "/.tmp-" not in f"/{name}"
            ]
            if done or process.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        assert process.poll() is None, (
            "the download ended before it could be killed:\n" + process.stdout.read().decode()
        )
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()
    at_kill = _listing(out)
    assert "_SUCCESS" not in at_kill and "card.json" not in at_kill
    assert 1 <= len([n for n in at_kill if n.endswith(".parquet") and ".tmp-" not in n]) < len(TRAIN_FILES)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    card = json.loads(rerun.stdout.strip().splitlines()[-1])
    assert "already complete and verified" in rerun.stderr
    assert {k: v for k, v in card.items() if k != "out_dir"} == {
        k: v for k, v in expected.items() if k != "out_dir"
    }
    assert _listing(out) == sorted([*TRAIN_FILES, "card.json", "_SUCCESS", "_ASRFLOW"])
    got, want = snapshot(out), snapshot(reference)
    assert got.pop("card.json") != want.pop("card.json")  # they differ only in "out_dir"
    assert got == want
    for name in TRAIN_FILES:
        assert storage.read_bytes(storage.join(out, name)) == (CORPUS / name).read_bytes()


# --- the hub, through huggingface_hub against a local stand-in for its HTTP API ----------
#
# No network here, so a small server answers the four calls huggingface_hub makes for a
# download (dataset info at a revision, the recursive tree, HEAD and GET of /resolve/) from the
# bundled corpus, as the hub does: parquet files as LFS files (sha256), README.md as a git blob.

HUB_SHA = "5b2c1f0d9e8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c"
HUB_TOKEN = "hf_test_secret_0123456789"


class _Hub(http.server.BaseHTTPRequestHandler):
    root = CORPUS
    repo = "MLCommons/peoples_speech"
    seen_auth: list[str | None] = []

    def log_message(self, *args: object) -> None:
        return None

    def _files(self) -> dict[str, Path]:
        return {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*")) if p.is_file()}

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: object) -> None:
        self._send(200, json.dumps(value).encode(), {"Content-Type": "application/json"})

    def _authorised(self) -> bool:
        self.seen_auth.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != f"Bearer {HUB_TOKEN}":
            self._send(401, b'{"error": "Invalid credentials"}', {"Content-Type": "application/json"})
            return False
        return True

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        if not self._authorised():
            return
        url = urllib.parse.urlparse(self.path)
        path = urllib.parse.unquote(url.path)
        info_prefix = f"/api/datasets/{self.repo}/revision/"
        tree_prefix = f"/api/datasets/{self.repo}/tree/{HUB_SHA}"
        resolve_prefix = f"/datasets/{self.repo}/resolve/{HUB_SHA}/"
        if path == f"/api/datasets/{self.repo}" or (
            path.startswith(info_prefix) and path[len(info_prefix) :] in ("main", HUB_SHA)
        ):
            readme = (self.root / "README.md").read_text()
            card = yaml.safe_load(readme.split("---")[1])
            self._json({"id": self.repo, "sha": HUB_SHA, "cardData": card, "private": False})
        elif path.startswith(tree_prefix):
            entries: list[dict[str, Any]] = [
                {"type": "directory", "path": d, "oid": "0" * 40} for d in ("clean", "test", "validation")
            ]
            for name, file in self._files().items():
                data = file.read_bytes()
                entry: dict[str, Any] = {
                    "type": "file",
                    "path": name,
                    "size": len(data),
                    "oid": _git_oid(data),
                }
                if name.endswith(".parquet"):
                    entry["lfs"] = {
                        "oid": hashlib.sha256(data).hexdigest(),
                        "size": len(data),
                        "pointerSize": 134,
                    }
                entries.append(entry)
            self._json(entries)
        elif path.startswith(resolve_prefix) and path[len(resolve_prefix) :] in self._files():
            data = self._files()[path[len(resolve_prefix) :]].read_bytes()
            etag = hashlib.sha256(data).hexdigest() if path.endswith(".parquet") else _git_oid(data)
            start = int(self.headers["Range"].split("=")[1].split("-")[0]) if self.headers.get("Range") else 0
            headers = {
                "X-Repo-Commit": HUB_SHA,
                "ETag": f'"{etag}"',
                "Content-Length": str(len(data) - start),
            }
            self._send(206 if start else 200, data[start:], headers)
        else:
            self._send(
                404,
                b'{"error": "not found"}',
                {"Content-Type": "application/json", "X-Error-Code": "EntryNotFound"},
            )

    do_HEAD = do_GET


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The stand-in hub on a free port; HF_ENDPOINT and HF_TOKEN point the client at it."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.setenv("HF_TOKEN", HUB_TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    _Hub.seen_auth = []
    yield endpoint
    server.shutdown()
    server.server_close()


def test_hub_source_to_local(hub: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        card = core.download(
            "hf://datasets/MLCommons/peoples_speech",
            data_root=str(tmp_path / "root"),
            config="clean",
            workers=2,
        ).to_dict()
    key = core.dataset_key("MLCommons/peoples_speech", "clean", "train", HUB_SHA)
    assert card["out_dir"] == str(tmp_path / "root" / key)
    assert key == f"datasets/MLCommons--peoples_speech/clean/train/{HUB_SHA}/raw"
    assert card["revision"] == HUB_SHA
    assert card["files"] == TRAIN_FILES
    assert (card["rows"], card["hours"]) == (300, train_hours())
    out = Path(card["out_dir"])
    for name in TRAIN_FILES:
        assert (out / name).read_bytes() == (CORPUS / name).read_bytes()
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == sorted(
        ["clean", *TRAIN_FILES, "card.json", "_SUCCESS", "_ASRFLOW"]
    )  # the staging area and the lock are gone
    assert set(_Hub.seen_auth) == {f"Bearer {HUB_TOKEN}"}
    assert HUB_TOKEN not in caplog.text
    # The card's validation split lives in another directory; a rerun downloads nothing.
    dev = core.download(
        "hf://datasets/MLCommons/peoples_speech@main",
        str(tmp_path / "dev"),
        config="clean",
        split="validation",
    ).to_dict()
    assert dev["files"] == ["validation/validation-00000-of-00001.parquet"]
    requests = len(_Hub.seen_auth)
    assert (
        core.download("hf://datasets/MLCommons/peoples_speech", card["out_dir"], config="clean").to_dict()
        == card
    )
    assert len(_Hub.seen_auth) == requests + 2  # the revision and the tree; no file


def test_resolve_revision_names_the_commit_a_download_gets(hub: str, tmp_path: Path) -> None:
    """The pipeline's uncached first step: main resolves to the hub's commit, nothing is copied."""
    requests = len(_Hub.seen_auth)
    result = CliRunner().invoke(
        asrflow_main, ["resolve-revision", "hf://datasets/MLCommons/peoples_speech", "--config", "clean"]
    )
    assert result.exit_code == 0, result.output
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert (card["step"], card["revision"], card["config"], card["split"]) == (
        "resolve-revision",
        HUB_SHA,
        "clean",
        "train",
    )
    assert len(_Hub.seen_auth) == requests + 2  # the revision and the tree; no file
    download = core.download(
        "hf://datasets/MLCommons/peoples_speech", str(tmp_path / "c"), config="clean"
    ).to_dict()
    assert download["revision"] == card["revision"] and download["num_files"] == card["num_files"]


def test_resolve_revision_of_a_local_source_is_its_content_hash() -> None:
    card = core.resolve_revision(str(CORPUS), config="clean", split="train")
    assert card.revision == make_plan(str(CORPUS), config="clean", split="train").revision
    result = CliRunner().invoke(asrflow_main, ["resolve-revision", "ftp://host/data"])
    assert result.exit_code != 0 and "Traceback" not in result.output


def test_hub_source_to_gcs_by_the_cli(hub: str, gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    out = f"{gcs_bucket}/ps"
    result = subprocess.run(
        [_asrflow(), "download", "hf://datasets/MLCommons/peoples_speech", "--out", out, "--config", "test",
         "--split", "test", "--revision", HUB_SHA],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert HUB_TOKEN not in result.stdout + result.stderr
    card = json.loads(result.stdout.strip().splitlines()[-1])
    assert (card["revision"], card["files"], card["rows"]) == (
        HUB_SHA,
        ["test/test-00000-of-00001.parquet"],
        60,
    )
    target = f"{out}/test/test-00000-of-00001.parquet"
    data = (CORPUS / "test/test-00000-of-00001.parquet").read_bytes()
    assert storage.read_bytes(target) == data
    # GCS keeps no SHA-256; the copy carries the hub's, so a rerun need not read it back.
    assert checksums.gcs_metadata(target) == {"asrflow-source-sha256": hashlib.sha256(data).hexdigest()}
    hash_uri = checksums.hash_uri

    def local_only(uri: str, algorithm: str, size: int) -> str:
        assert not storage.is_gcs(uri), f"{uri} was read back"
        return hash_uri(uri, algorithm, size)

    monkeypatch.setattr(checksums, "hash_uri", local_only)
    assert (
        core.download("hf://datasets/MLCommons/peoples_speech", out, config="test", split="test").to_dict()
        == card
    )
    # A recorded checksum that does not match means the object is redone.
    blob = storage.gcs_client().bucket(gcs_bucket[5:]).blob("ps/test/test-00000-of-00001.parquet")
    blob.metadata = {"asrflow-source-sha256": "0" * 64}
    blob.patch()
    assert (
        core.download("hf://datasets/MLCommons/peoples_speech", out, config="test", split="test").to_dict()
        == card
    )
    assert checksums.gcs_metadata(target) == {"asrflow-source-sha256": hashlib.sha256(data).hexdigest()}


def test_hub_errors(hub: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DownloadError, match="config 'dirty' is not in the dataset card"):
        core.download("hf://datasets/MLCommons/peoples_speech", str(tmp_path / "o"), config="dirty")
    with pytest.raises(DownloadError, match="two revisions given"):
        core.download("hf://datasets/MLCommons/peoples_speech@main", str(tmp_path / "o"), revision="v2")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(
        DownloadError, match=r"hub dataset MLCommons/peoples_speech@main: .*401.*HF_TOKEN"
    ) as err:
        core.download("hf://datasets/MLCommons/peoples_speech", str(tmp_path / "o"), config="clean")
    assert "hf_wrong" not in str(err.value)


# --- the KFP component -------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You may be attemping to run a task:RuntimeWarning")
def test_component_runs_in_kfp_local_and_never_logs_the_token(
    hub: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    from kfp import local

    from components.download.component import download

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = download(
        source="hf://datasets/MLCommons/peoples_speech",
        data_root=str(tmp_path / "root"),
        config="clean",
        split="validation",
        workers=2,
    )
    key = core.dataset_key("MLCommons/peoples_speech", "clean", "validation", HUB_SHA)
    assert task.outputs["Output"] == str(tmp_path / "root" / key)
    card = json.loads(Path(task.outputs["card"].path).read_text())
    assert card == cards.read_card(str(tmp_path / "root" / key))
    assert (card["rows"], card["revision"]) == (60, HUB_SHA)
    assert task.outputs["card"].metadata["uri"] == card["out_dir"]
    assert task.outputs["metrics"].metadata["rows"] == 60
    assert task.outputs["metrics"].metadata["hours"] == card["hours"] > 0
    logs = capfd.readouterr()
    assert "download: 1/1 files" in logs.out + logs.err
    assert HUB_TOKEN not in logs.out + logs.err

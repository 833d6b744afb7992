"""write-shards: NeMo's layout read back by NeMo, named rejects, determinism, kill and rerun."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from components import layout, outputs, storage
from components.audio import Rules
from components.manifest import RejectThresholdExceeded, normalize_text, read_manifest
from components.member_names import member_stem
from components.shard import core
from components.shard import plan as shard_plan
from components.shard.cli import write_shards as write_shards_command
from components.shard.group import DELAY_ENV, GROUPS_DIR
from components.shard.plan import group_specs, make_plan
from components.shard.tar import member_header, member_info
from components.sources import open_source
from tests.components.shard_inputs import bad_rows, bundled_rows, write_manifest_input, write_parquet

ASRFLOW = str(Path(sys.executable).with_name("asrflow"))
OUTPUT_FILES = ("tarred_audio_manifest.json", "metadata.yaml", "rejects.jsonl")


def dataset_bytes(out: Path) -> dict[str, bytes]:
    """Every file that must be byte-identical between equivalent runs."""
    names = sorted(p.name for p in out.glob("audio_*.tar"))
    names += sorted(f"sharded_manifests/{p.name}" for p in (out / "sharded_manifests").iterdir())
    names += list(OUTPUT_FILES)
    return {name: (out / name).read_bytes() for name in names}


def bundled_truth(corpus: Path) -> dict[str, dict]:
    rows = {}
    for path in sorted((corpus / "clean").glob("*.parquet")):
        for row in pq.read_table(path, columns=["id", "duration_ms", "text"]).to_pylist():
            rows[row["id"]] = row
    return rows


def test_layout_is_nemo_tarred(bundled_shards: Path) -> None:
    assert sorted(p.name for p in bundled_shards.glob("audio_*.tar")) == [f"audio_{i}.tar" for i in range(4)]
    manifests = [
        read_manifest(str(bundled_shards / f"sharded_manifests/manifest_{i}.json")) for i in range(4)
    ]
    full = read_manifest(str(bundled_shards / "tarred_audio_manifest.json"))
    assert full == [entry for shard in manifests for entry in shard]
    for shard_id, entries in enumerate(manifests):
        with tarfile.open(bundled_shards / f"audio_{shard_id}.tar") as tar:
            members = tar.getmembers()
        assert [m.name for m in members] == [e["audio_filepath"] for e in entries]
        assert {e["shard_id"] for e in entries} == {shard_id}
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname, m.mode) for m in members} == {
            (0, 0, 0, "", "", 0o644)
        }
        assert all("/" not in m.name and m.name.count(".") == 1 for m in members)
    metadata = yaml.safe_load((bundled_shards / "metadata.yaml").read_text())
    assert metadata["dataset_config"]["num_shards"] == 4
    assert metadata["dataset_config"]["shuffle_seed"] == 0
    assert metadata["num_samples_per_shard"] == 75
    assert metadata["asrflow"]["utterances"] == 300 and metadata["asrflow"]["rejects_by_reason"] == {}
    card = json.loads((bundled_shards / "card.json").read_text())
    assert card["utterances"] == 300 and card["rejected"] == 0
    assert abs(card["hours"] - sum(e["duration"] for e in full) / 3600) < 1e-5
    assert (bundled_shards / "_SUCCESS").exists()


def test_every_shard_mixes_source_files(bundled_shards: Path, bundled_corpus: Path) -> None:
    file_of = {}
    for path in sorted((bundled_corpus / "clean").glob("*.parquet")):
        file_of.update(
            {row_id: path.name for row_id in pq.read_table(path, columns=["id"])["id"].to_pylist()}
        )
    for shard_id in range(4):
        entries = read_manifest(str(bundled_shards / f"sharded_manifests/manifest_{shard_id}.json"))
        assert {file_of[e["source_id"]] for e in entries} == set(file_of.values())  # all 4 parquet files
        recordings = {e["source_id"].split("/")[0] for e in entries}  # one source recording per prefix
        assert len(recordings) >= 10
        assert 50 <= len(entries) <= 100  # 300 items hashed into 4 shards
        # consecutive members come from different files (files are read interleaved)
        switches = sum(
            file_of[a["source_id"]] != file_of[b["source_id"]] for a, b in itertools.pairwise(entries)
        )
        assert switches >= len(entries) // 4


def test_nemo_reads_every_utterance_exactly_once(bundled_shards: Path, bundled_corpus: Path) -> None:
    from nemo.collections.common.data.lhotse.nemo_adapters import LazyNeMoTarredIterator

    iterator = LazyNeMoTarredIterator(
        manifest_path=str(bundled_shards / "sharded_manifests" / "manifest__OP_0..3_CL_.json"),
        tar_paths=str(bundled_shards / "audio__OP_0..3_CL_.tar"),
        shard_seed=0,
    )
    truth = bundled_truth(bundled_corpus)
    seen = Counter()
    for cut in iterator:
        source_id = cut.custom["source_id"]
        seen[source_id] += 1
        row = truth[source_id]
        assert cut.supervisions[0].text == normalize_text(row["text"])
        assert abs(cut.duration - row["duration_ms"] / 1000) < 0.01
        audio = cut.load_audio()
        assert audio.shape == (1, round(cut.duration * 16000)) and cut.sampling_rate == 16000
    assert seen == Counter({source_id: 1 for source_id in truth})


def test_bad_inputs_get_named_reasons_and_nothing_valid_is_lost(tmp_path: Path, bundled_corpus: Path) -> None:
    valid = bundled_rows(bundled_corpus, 40)
    bad = bad_rows(valid)
    write_parquet(valid[:20] + bad + valid[20:], tmp_path / "in" / "train-00000-of-00001.parquet")
    rules = Rules(min_duration=0.1, max_duration=15.0, resample=False)
    with pytest.raises(RejectThresholdExceeded) as failure:
        core.write_shards(str(tmp_path / "in"), str(tmp_path / "strict"), 3, 7, rules=rules)
    assert "write-shards: rejected 9 of 51 items as faulty (17.6% > --max-reject-fraction 1.0%)" in str(
        failure.value
    )
    assert "audio_corrupt: 1" in str(failure.value) and str(tmp_path / "strict" / "rejects.jsonl") in str(
        failure.value
    )
    assert not (tmp_path / "strict" / "_SUCCESS").exists()

    card = core.write_shards(
        str(tmp_path / "in"), str(tmp_path / "out"), 3, 7, rules=rules, max_reject_fraction=0.5
    )
    rejects = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["reason"]) for r in rejects) == sorted((r.id, r.reason) for r in bad)
    assert all(
        r["source"].endswith(f"train-00000-of-00001.parquet:row {20 + i}") for i, r in enumerate(rejects)
    )
    kept = read_manifest(str(tmp_path / "out" / "tarred_audio_manifest.json"))
    assert sorted(e["source_id"] for e in kept) == sorted(r.id for r in valid)
    assert {e["source_id"]: e["text"] for e in kept} == {r.id: normalize_text(r.text) for r in valid}
    assert card["rejects_by_reason"] == dict(Counter(r.reason for r in bad))
    assert (card["utterances"], card["rejected"], card["filtered"], card["faulty"]) == (40, 11, 2, 9)
    metadata = yaml.safe_load((tmp_path / "out" / "metadata.yaml").read_text())
    assert metadata["asrflow"]["rejects_by_reason"] == card["rejects_by_reason"]
    assert metadata["dataset_config"]["max_duration"] == 15.0


def test_resampling_and_full_decode(tmp_path: Path, bundled_corpus: Path) -> None:
    import io

    import soundfile as sf

    valid = bundled_rows(bundled_corpus, 12)
    bad = {row.id: row for row in bad_rows(valid)}
    truncated = valid[9].audio[: len(valid[9].audio) * 6 // 10]
    rows = valid[:9] + [bad["bad/8khz"], bad["bad/stereo"]]
    rows.append(type(valid[9])("trunc", truncated, valid[9].duration_ms, valid[9].text))
    write_parquet(rows, tmp_path / "in" / "train-00000-of-00001.parquet")
    out = tmp_path / "resampled"
    core.write_shards(str(tmp_path / "in"), str(out), 2, 0, max_reject_fraction=0.0)
    entries = {e["source_id"]: e for e in read_manifest(str(out / "tarred_audio_manifest.json"))}
    assert len(entries) == 12  # the header check trusts the truncated file's frame count
    for source_id in ("bad/8khz", "bad/stereo"):
        entry = entries[source_id]
        with tarfile.open(out / f"audio_{entry['shard_id']}.tar") as tar:
            data = tar.extractfile(entry["audio_filepath"]).read()
        info = sf.info(io.BytesIO(data))
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert entry["duration"] == info.frames / 16000
        assert abs(entry["duration"] - valid[0].duration_ms / 1000) < 0.01
    full = core.write_shards(
        str(tmp_path / "in"),
        str(tmp_path / "full"),
        2,
        0,
        rules=Rules(full_decode=True),
        max_reject_fraction=0.1,
    )
    assert full["rejects_by_reason"] == {"audio_corrupt": 1}
    reject = json.loads((tmp_path / "full" / "rejects.jsonl").read_text())
    assert reject["id"] == "trunc" and "flac decoder lost sync" in reject["detail"]


def test_manifest_input(tmp_path: Path, bundled_corpus: Path) -> None:
    rows = bundled_rows(bundled_corpus, 20)
    extra = [b"{not json", b'{"audio_filepath": "wavs/none.flac", "duration": 1, "text": "x"}']
    manifest = write_manifest_input(rows, tmp_path / "set", extra)
    card = core.write_shards(str(manifest), str(tmp_path / "out"), 2, 0, max_reject_fraction=0.2)
    assert card["rejects_by_reason"] == {"audio_missing": 1, "manifest_malformed": 1}
    entries = read_manifest(str(tmp_path / "out" / "tarred_audio_manifest.json"))
    assert sorted(e["source_id"] for e in entries) == [f"wavs/utt{i:03d}" for i in range(20)]
    assert all(e["speaker"] == int(e["source_id"][-3:]) % 3 for e in entries)  # extra keys kept
    assert {e["audio_filepath"] for e in entries} == {f"{member_stem(e['source_id'])}.flac" for e in entries}
    assert all(re.fullmatch(r"wavs_utt\d{3}-[0-9a-f]{16}\.flac", e["audio_filepath"]) for e in entries)


def test_missing_column_is_a_clear_error(tmp_path: Path, bundled_corpus: Path) -> None:
    table = pq.read_table(bundled_corpus / "clean" / "train-00002-of-00004.parquet").drop_columns(["audio"])
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "train-00000-of-00001.parquet")
    result = CliRunner().invoke(
        write_shards_command, [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--num-shards", "2"]
    )
    assert result.exit_code == 1
    assert "train-00000-of-00001.parquet: no column 'audio' (it has id, duration_ms, text" in result.output


def test_reject_threshold_failure_from_the_cli(tmp_path: Path, bundled_corpus: Path) -> None:
    valid = bundled_rows(bundled_corpus, 30)
    write_parquet(valid + bad_rows(valid)[:2], tmp_path / "in" / "train-00000-of-00001.parquet")
    args = [str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--num-shards", "2", "--workers", "1"]
    result = CliRunner().invoke(write_shards_command, args)
    assert result.exit_code == 1
    assert "Error: write-shards: rejected 2 of 32 items as faulty (6.2% > --max-reject-fraction 1.0%)" in (
        result.output
    )
    assert "by reason: audio_corrupt: 1, audio_empty: 1" in result.output
    assert (tmp_path / "out" / "rejects.jsonl").exists() and not (tmp_path / "out" / "_SUCCESS").exists()
    result = CliRunner().invoke(write_shards_command, [*args, "--max-reject-fraction", "0.1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["utterances"] == 30


def test_same_input_and_seed_give_the_same_bytes(
    tmp_path: Path, bundled_corpus: Path, bundled_shards: Path
) -> None:
    again = tmp_path / "again"
    core.write_shards(str(bundled_corpus / "clean"), str(again), 4, 0)
    assert dataset_bytes(again) == dataset_bytes(bundled_shards)
    other_seed = tmp_path / "seed1"
    core.write_shards(str(bundled_corpus / "clean"), str(other_seed), 4, 1)
    assert dataset_bytes(other_seed)["audio_0.tar"] != dataset_bytes(bundled_shards)["audio_0.tar"]


def test_a_rerun_merge_keeps_the_finished_dataset_and_its_bins(tmp_path: Path, bundled_corpus: Path) -> None:
    """A KFP rerun of merge on unchanged data (a retry, or a cache miss upstream) must not
    rewrite metadata.yaml without the bins estimate-buckets added."""
    from components.buckets.core import estimate_buckets

    source = str(bundled_corpus / "clean")
    fan = tmp_path / "fan"
    cards = [core.write_shards(source, str(fan), 4, 0, groups=2, group=i) for i in (0, 1)]
    first = core.merge_groups(source, cards, 0.01)
    bins = estimate_buckets(str(fan), num_buckets=3)["bucket_duration_bins"]
    before = {name: (data, (fan / name).stat().st_mtime_ns) for name, data in dataset_bytes(fan).items()}
    again = core.merge_groups(source, cards, 0.01)
    assert again == first
    after = {name: (data, (fan / name).stat().st_mtime_ns) for name, data in dataset_bytes(fan).items()}
    assert after == before
    metadata = yaml.safe_load((fan / layout.METADATA_NAME).read_text())
    assert metadata["dataset_config"]["bucket_duration_bins"] == bins


def test_fan_out_and_merge_equal_one_run(tmp_path: Path, bundled_corpus: Path) -> None:
    source = str(bundled_corpus / "clean")
    single = tmp_path / "single"
    core.write_shards(source, str(single), 5, 3, groups=2, workers=2)
    fan = tmp_path / "fan"
    specs = group_specs(source, 2)
    assert specs == ["0/2", "1/2"]
    cards = []
    for spec in reversed(specs):  # order does not matter
        index, count = map(int, spec.split("/"))
        cards.append(core.write_shards(source, str(fan), 5, 3, groups=count, group=index))
    assert not (fan / "_SUCCESS").exists()
    assert [c["shards"] for c in cards] == [[2, 5], [0, 2]]
    merged = core.merge_groups(source, cards, 0.01)
    assert dataset_bytes(fan) == dataset_bytes(single)
    assert merged["utterances"] == 300 and merged["groups"] == 2
    # the CLI form of the same fan-out
    cli = tmp_path / "cli"
    for spec in specs:
        result = CliRunner().invoke(
            write_shards_command,
            [source, "--out", str(cli), "--num-shards", "5", "--seed", "3", "--group", spec],
        )
        assert result.exit_code == 0, result.output
    result = CliRunner().invoke(
        write_shards_command,
        [source, "--out", str(cli), "--num-shards", "5", "--seed", "3", "--groups", "2", "--merge"],
    )
    assert result.exit_code == 0, result.output
    assert dataset_bytes(cli) == dataset_bytes(single)


def test_rerun_of_a_finished_dataset_and_a_clash_of_settings(tmp_path: Path, bundled_corpus: Path) -> None:
    out = tmp_path / "out"
    first = core.write_shards(str(bundled_corpus / "clean"), str(out), 2, 0)
    stamp = (out / "audio_0.tar").stat().st_mtime_ns
    assert core.write_shards(str(bundled_corpus / "clean"), str(out), 2, 0) == first
    assert (out / "audio_0.tar").stat().st_mtime_ns == stamp
    with pytest.raises(
        core.ShardError, match="already holds a finished dataset made with other input or settings"
    ):
        core.write_shards(str(bundled_corpus / "clean"), str(out), 2, 1)


def test_kill_and_rerun_gives_the_same_bytes(tmp_path: Path, bundled_corpus: Path) -> None:
    source = str(bundled_corpus / "clean")
    reference = tmp_path / "reference"
    core.write_shards(source, str(reference), 4, 0, groups=2)
    out = tmp_path / "killed"
    command = [ASRFLOW, "write-shards", source, "--out", str(out), "--num-shards", "4", "--groups", "2"]
    command += ["--workers", "1"]
    env = {**os.environ, DELAY_ENV: "0.02"}  # about 3 s a group
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first_marker = out / GROUPS_DIR / "group_00000_of_00002.json"
    deadline = time.monotonic() + 120
    while not first_marker.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.monotonic() < deadline, "the first group never finished"
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the second group
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert not (out / "_SUCCESS").exists()
    assert not (out / GROUPS_DIR / "group_00001_of_00002.json").exists()
    leftovers = [p.name for p in out.iterdir() if p.name.startswith(storage.TEMP_PREFIX)]
    assert leftovers, "the killed run should have been writing a shard"
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert "group_00000_of_00002 already written, skipped" in rerun.stderr
    assert json.loads(rerun.stdout.strip().splitlines()[-1])["utterances"] == 300
    assert dataset_bytes(out) == dataset_bytes(reference)
    assert not [p for p in out.rglob(f"{storage.TEMP_PREFIX}*")]


def test_gcs_input_and_output(gcs_bucket: str, tmp_path: Path, bundled_corpus: Path) -> None:
    for name in ("train-00000-of-00004.parquet", "train-00001-of-00004.parquet"):
        storage.upload_file(bundled_corpus / "clean" / name, f"{gcs_bucket}/raw/{name}")
    out = f"{gcs_bucket}/tarred"
    card = core.write_shards(f"{gcs_bucket}/raw", out, 2, 0)
    assert card["utterances"] == 150 and storage.is_complete(out)
    local_in = tmp_path / "in"
    local_in.mkdir()
    for name in ("train-00000-of-00004.parquet", "train-00001-of-00004.parquet"):
        (local_in / name).write_bytes((bundled_corpus / "clean" / name).read_bytes())
    local_out = tmp_path / "out"
    core.write_shards(str(local_in), str(local_out), 2, 0)
    for name in ("audio_0.tar", "audio_1.tar", "sharded_manifests/manifest_1.json"):
        local = (local_out / name).read_bytes()
        remote = storage.read_bytes(f"{out}/{name}")
        # source ids and bytes agree; only the input URI differs (it is not in shards or manifests)
        assert remote == local


def test_default_out_dir_is_beside_the_download(tmp_path: Path, bundled_corpus: Path) -> None:
    raw = tmp_path / "datasets" / "ps" / "clean" / "train" / "abc123" / "raw"
    raw.mkdir(parents=True)
    name = "train-00003-of-00004.parquet"
    (raw / name).write_bytes((bundled_corpus / "clean" / name).read_bytes())
    (raw / "card.json").write_text(json.dumps({"files": [name], "format": "parquet"}))
    card = core.write_shards(str(raw), None, 2, 5)
    out = Path(card["out_dir"])
    assert out.parent == raw.parent / "tarred" and out.name.startswith("2-shards-seed5-")
    assert (out / "_SUCCESS").exists()
    with pytest.raises(core.ShardError, match="give --out"):
        core.write_shards(str(bundled_corpus / "clean"), None, 2, 5)


def test_inputs_from_the_download_step(tmp_path: Path, bundled_corpus: Path, bundled_shards: Path) -> None:
    from components.download.core import download

    raw = tmp_path / "parquet" / "raw"
    download(str(bundled_corpus), str(raw), config="clean", split="train", workers=2)
    card = core.write_shards(str(raw), str(tmp_path / "from_card"), 4, 0)
    assert card["input"] == str(raw / "card.json") and card["utterances"] == 300
    # the same rows and seed as the bundled directory: the same shards
    assert (
        dataset_bytes(tmp_path / "from_card")["audio_3.tar"] == dataset_bytes(bundled_shards)["audio_3.tar"]
    )

    rows = bundled_rows(bundled_corpus, 10)
    manifest = write_manifest_input(rows, tmp_path / "nemo", [])
    raw_manifest = tmp_path / "manifest" / "raw"
    download(str(manifest), str(raw_manifest), workers=2)
    card = core.write_shards(str(raw_manifest), None, 2, 0)
    entries = read_manifest(str(Path(card["out_dir"]) / "tarred_audio_manifest.json"))
    assert sorted(e["text"] for e in entries) == sorted(normalize_text(r.text) for r in rows)
    assert Path(card["out_dir"]).parent == raw_manifest.parent / "tarred"


@pytest.mark.parametrize(
    ("name", "size"),
    [("a.flac", 0), ("x" * 100, 123456789), ("x" * 101, 5), ("é.flac", 7), ("s_1.wav", 8**11)],
)
def test_member_header_is_what_tarfile_writes(name: str, size: int) -> None:
    expected = member_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    assert member_header(name, size) == expected


def test_flac_header_fast_path_agrees_with_libsndfile(bundled_corpus: Path) -> None:
    import io

    import soundfile as sf

    from components.audio import flac_header

    rows = bundled_rows(bundled_corpus, 20, file_index=3)
    for row in rows:
        info = sf.info(io.BytesIO(row.audio))
        assert flac_header(row.audio) == (info.samplerate, info.channels, info.frames)
    for row in bad_rows(bundled_rows(bundled_corpus, 12)):
        if row.audio[:4] == b"fLaC":
            info = sf.info(io.BytesIO(row.audio))
            assert flac_header(row.audio) == (info.samplerate, info.channels, info.frames)
    audio = rows[0].audio
    assert flac_header(audio[:40]) is None  # cut inside STREAMINFO
    assert flac_header(audio[:4] + b"\x01" + audio[5:]) is None  # first block not STREAMINFO
    damaged = bytearray(audio)
    damaged[8 + 34] ^= 0xFF  # the next block header: the chain no longer leads to a frame
    assert flac_header(bytes(damaged)) is None


def test_kfp_components_fan_out_and_merge_locally(tmp_path: Path, bundled_corpus: Path) -> None:
    """plan → one write_shard_group per group → merge_shards, run by kfp.local, equals one task."""
    from kfp import dsl, local

    from components.download.component import download
    from components.shard.component import merge_shards, plan_shard_groups, write_shard_group, write_shards

    def fan_out(source, raw_dir, out_dir):  # annotated below: this module's annotations are strings
        raw = download(source=source, config="clean", split="train", out_dir=raw_dir, data_root="")
        input_dir = raw.outputs["Output"]
        groups = plan_shard_groups(input_dir=input_dir, max_groups=2)
        with dsl.ParallelFor(groups.output) as group:
            part = write_shard_group(
                download_card=raw.outputs["card"], group=group, num_shards=4, seed=0, out_dir=out_dir
            )
        merged = merge_shards(input_dir=input_dir, group_cards=dsl.Collected(part.outputs["card"]))
        return merged.outputs["out_dir"]

    fan_out.__annotations__ = {"source": str, "raw_dir": str, "out_dir": str, "return": str}
    fan_out = dsl.pipeline(fan_out)

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    raw_dir = str(tmp_path / "raw")
    run = fan_out(source=str(bundled_corpus), raw_dir=raw_dir, out_dir=str(tmp_path / "fan"))
    assert run.output == str(tmp_path / "fan")
    single = write_shards(input_dir=raw_dir, out_dir=str(tmp_path / "single"), num_shards=4, seed=0, groups=2)
    assert single.outputs["card"].metadata["utterances"] == 300
    assert dataset_bytes(tmp_path / "fan") == dataset_bytes(tmp_path / "single")


# --- output directories: foreign files, a second writer, orphans, temporaries --------------


def _run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ASRFLOW, *args], capture_output=True, text=True, timeout=300, **kwargs)


def descendants(pid: int) -> dict[int, str]:
    """Live descendants of ``pid`` (pid -> start time), from /proc."""
    from tests.chaos import live_processes

    children: dict[int, list[int]] = {}
    start: dict[int, str] = {}
    for child, fields in live_processes().items():
        children.setdefault(int(fields[1]), []).append(child)
        start[child] = fields[19]
    found, todo = {}, [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found[child] = start[child]
            todo.append(child)
    return found


def still_alive(processes: dict[int, str]) -> list[int]:
    alive = []
    for pid, started in processes.items():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X") and fields[19] == started:
            alive.append(pid)
    return alive


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_directory_holding_other_files_is_refused(
    where: str, request: pytest.FixtureRequest, tmp_path: Path, bundled_corpus: Path
) -> None:
    """It used to overwrite audio_0.tar and mix notes.txt into the dataset, exit 0."""
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    out = storage.join(base, "mine")
    storage.write_text(storage.join(out, "notes.txt"), "my notes\n")
    storage.write_text(storage.join(out, "audio_0.tar"), "someone else's shard\n")
    result = _run_cli(["write-shards", str(bundled_corpus / "clean"), "--out", out, "--num-shards", "2"])
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"Error: write-shards: {out} is not empty and holds no write-shards run of asrflow (it has "
        "audio_0.tar, and no _ASRFLOW marker); write to an empty or new directory, or empty this one"
    )
    assert "Traceback" not in result.stderr
    assert storage.read_text(storage.join(out, "audio_0.tar")) == "someone else's shard\n"
    left = sorted(info.uri for info in storage.list_files(out))
    assert left == [storage.join(out, "audio_0.tar"), storage.join(out, "notes.txt")]
    # a download's directory is not write-shards' either
    raw = tmp_path / "raw"
    from components.download.core import download

    download(str(bundled_corpus), str(raw), config="clean", split="train", workers=2)
    with pytest.raises(core.ShardError, match=f"{raw} holds the output of download, not of write-shards"):
        core.write_shards(str(raw), str(raw), 2, 0)


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_a_second_writer_fails_at_once_and_the_first_finishes_intact(
    where: str, request: pytest.FixtureRequest, tmp_path: Path, bundled_corpus: Path
) -> None:
    """Two runs on one --out used to delete each other's temporaries; the first crashed."""
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    source = str(bundled_corpus / "clean")
    reference = tmp_path / "reference"
    core.write_shards(source, str(reference), 4, 0, groups=2)
    out = storage.join(base, "shared")
    args = ["write-shards", source, "--out", out, "--num-shards", "4", "--groups", "2", "--workers", "1"]
    env = {**os.environ, DELAY_ENV: "0.02"}
    first = subprocess.Popen(
        [ASRFLOW, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while not storage.exists(storage.join(out, GROUPS_DIR, "group_00000_of_00002.json")):
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.05)
        started = time.monotonic()
        second = _run_cli(args)
        assert time.monotonic() - started < 30  # at once: not after the first run's minutes
        assert second.returncode == 1, second.stderr
        last = second.stderr.strip().splitlines()[-1]
        assert last.startswith(
            f"Error: write-shards: {out} is being written by another run (write-shards on host "
        )
        assert f"pid {first.pid}, since " in last and "wait for it to end, or write elsewhere" in last
        stdout, stderr = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, stderr
    assert json.loads(stdout.strip().splitlines()[-1])["utterances"] == 300
    for name, data in dataset_bytes(reference).items():
        assert storage.read_bytes(storage.join(out, name)) == data, name
    assert not storage.exists(outputs.lock_uri(out))
    assert not storage.exists(outputs.lock_uri(out, "group_00001_of_00002"))


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_pool_workers_die_with_a_killed_run_and_the_rerun_is_identical(
    where: str, request: pytest.FixtureRequest, tmp_path: Path, bundled_corpus: Path
) -> None:
    """After SIGKILL of write-shards its pool workers used to live on, parent 1, writing.
    (Locally the workers are forked; on gs:// they come from a fork server.)"""
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    source = str(bundled_corpus / "clean")
    reference = tmp_path / "reference"
    core.write_shards(source, str(reference), 4, 0, groups=2, workers=1)
    out = storage.join(base, "killed")
    command = [ASRFLOW, "write-shards", source, "--out", out, "--num-shards", "4", "--groups", "2"]
    command += ["--workers", "2"]
    env = {**os.environ, DELAY_ENV: "0.05", "TMPDIR": str(tmp_path)}  # about 8 s a group
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    family: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(descendants(process.pid)) < 2:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the workers never started"
            time.sleep(0.05)
        time.sleep(2.0)  # both workers are writing their groups
        family = descendants(process.pid)
        assert len(family) >= 2  # two workers (and a fork server and resource tracker, if used)
        process.send_signal(signal.SIGKILL)
        process.wait()
        deadline = time.monotonic() + 10
        while still_alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_alive(family) == [], "processes of the killed run live on"
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
        for pid in still_alive(family):
            os.kill(pid, signal.SIGKILL)
    assert not storage.exists(storage.join(out, "_SUCCESS"))
    rerun = _run_cli(command[1:], env={**env, DELAY_ENV: "0"})
    assert rerun.returncode == 0, rerun.stderr
    for name, data in dataset_bytes(reference).items():
        assert storage.read_bytes(storage.join(out, name)) == data, name
    if where == "gcs":
        bucket, prefix = storage.split_gcs(out)
        names = [blob.name for blob in storage.gcs_client().list_blobs(bucket, prefix=prefix + "/")]
    else:
        names = [str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()]
    assert not [name for name in names if storage.TEMP_PREFIX in name], names
    assert not [p for p in (tmp_path / outputs.STAGING_ROOT).rglob("*") if p.is_file()]


@pytest.mark.parametrize("where", ["local", "gcs"])
def test_sigterm_stops_the_run_and_its_workers_and_releases_the_locks(
    where: str, request: pytest.FixtureRequest, tmp_path: Path, bundled_corpus: Path
) -> None:
    """A pod being stopped gets SIGTERM: no worker, lock or temporary file may outlive it."""
    base = request.getfixturevalue("gcs_bucket") if where == "gcs" else str(tmp_path)
    out = storage.join(base, "stopped")
    command = [ASRFLOW, "write-shards", str(bundled_corpus / "clean"), "--out", out, "--num-shards", "4"]
    command += ["--groups", "2", "--workers", "2"]
    env = {**os.environ, DELAY_ENV: "0.05", "TMPDIR": str(tmp_path)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    family: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while len(family) < 2:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the workers never started"
            family = descendants(process.pid)
            time.sleep(0.1)
        time.sleep(2.0)  # both workers are writing their groups
        family = descendants(process.pid)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 143
        deadline = time.monotonic() + 10
        while still_alive(family) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert still_alive(family) == []
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    if where == "gcs":
        bucket, prefix = storage.split_gcs(out)
        names = [blob.name for blob in storage.gcs_client().list_blobs(bucket, prefix=prefix + "/")]
    else:
        names = [str(p.relative_to(out)) for p in Path(out).rglob("*") if p.is_file()]
    assert not [name for name in names if storage.TEMP_PREFIX in name], names  # no lock, no temporary
    assert not [p for p in (tmp_path / outputs.STAGING_ROOT).rglob("*") if p.is_file()]


def test_a_killed_gcs_run_leaves_no_staging_files_after_the_rerun(
    gcs_bucket: str, tmp_path: Path, bundled_corpus: Path
) -> None:
    """The local files of gs:// writes were /tmp/.tmp-* files that no rerun removed."""
    source = str(bundled_corpus / "clean")
    reference = tmp_path / "reference"
    core.write_shards(source, str(reference), 4, 0, groups=2)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {**os.environ, "TMPDIR": str(tmp), DELAY_ENV: "0.02"}
    out = f"{gcs_bucket}/killed"
    command = [ASRFLOW, "write-shards", source, "--out", out, "--num-shards", "4", "--groups", "2"]
    command += ["--workers", "1"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not storage.exists(f"{out}/{GROUPS_DIR}/group_00000_of_00002.json"):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the first group never finished"
            time.sleep(0.05)
        time.sleep(1.0)  # inside the second group
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
        process.stderr.close()
    staged = [p for p in tmp.rglob("*") if p.is_file()]
    assert staged and all(p.name.startswith(storage.TEMP_PREFIX) for p in staged)
    rerun = _run_cli(command[1:], env={**env, DELAY_ENV: "0"})
    assert rerun.returncode == 0, rerun.stderr
    assert not [p for p in tmp.rglob("*") if p.is_file()], "the killed run's staging files are still there"
    assert all(p.is_relative_to(tmp / outputs.STAGING_ROOT) for p in staged)
    for name, data in dataset_bytes(reference).items():
        assert storage.read_bytes(f"{out}/{name}") == data, name
    assert not [info for info in storage.list_files(out) if "lock" in info.uri]
    bucket, prefix = storage.split_gcs(out)
    assert not [
        b.name for b in storage.gcs_client().list_blobs(bucket, prefix=prefix + "/") if ".tmp-" in b.name
    ]


# --- settings fingerprint and member names -------------------------------------------------


def test_input_spelled_otherwise_is_the_same_input(
    tmp_path: Path, bundled_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dir`` then ``/abs/dir`` used to be refused as "other input or settings"."""
    import shutil

    shutil.copytree(bundled_corpus / "clean", tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    part = core.write_shards("in", str(out), 4, 0, groups=2, group=0)  # a run killed after one group
    card = core.write_shards(str(tmp_path / "in"), str(out), 4, 0, groups=2)
    assert card["settings_id"] == part["settings_id"] and card["input"] == str(tmp_path / "in")
    reference = core.write_shards(str(bundled_corpus / "clean"), str(tmp_path / "reference"), 4, 0, groups=2)
    assert reference["settings_id"] == card["settings_id"]  # the same files elsewhere: the same input
    got, want = dataset_bytes(out), dataset_bytes(tmp_path / "reference")
    metadata = [yaml.safe_load(files.pop(layout.METADATA_NAME)) for files in (got, want)]
    assert got == want
    assert [m["asrflow"].pop("input") for m in metadata] == [
        str(tmp_path / "in"),
        str(bundled_corpus / "clean"),
    ]
    assert metadata[0] == metadata[1]
    assert core.write_shards("./in/", str(out), 4, 0, groups=2) == card


def test_ids_that_sanitise_alike_all_get_their_own_member(tmp_path: Path, bundled_corpus: Path) -> None:
    """``a.b`` and ``a_b`` (and ``x``, ``x.flac``) used to share one member name: all but one
    were rejected as duplicates."""
    from nemo.collections.common.data.lhotse.nemo_adapters import LazyNeMoTarredIterator

    valid = bundled_rows(bundled_corpus, 8)
    ids = ["a.b", "a_b", "a b", "a/b", "x", "x.flac", "LibriSpeech-1089-0000", "y-0123456789abcdef"]
    rows = [dataclasses.replace(row, id=item_id) for row, item_id in zip(valid, ids, strict=True)]
    write_parquet(rows, tmp_path / "in" / "train-00000-of-00001.parquet")
    out = tmp_path / "out"
    card = core.write_shards(str(tmp_path / "in"), str(out), 2, 0, max_reject_fraction=0.0)
    assert card["utterances"] == 8 and card["rejected"] == 0
    entries = read_manifest(str(out / "tarred_audio_manifest.json"))
    members = {e["source_id"]: e["audio_filepath"] for e in entries}
    assert len(set(members.values())) == 8
    assert members["a_b"] == "a_b.flac" and members["x"] == "x.flac"  # safe ids keep their names
    assert members["LibriSpeech-1089-0000"] == "LibriSpeech-1089-0000.flac"
    assert re.fullmatch(r"a_b-[0-9a-f]{16}\.flac", members["a.b"])
    iterator = LazyNeMoTarredIterator(
        manifest_path=str(out / "sharded_manifests" / "manifest__OP_0..1_CL_.json"),
        tar_paths=str(out / "audio__OP_0..1_CL_.tar"),
        shard_seed=0,
    )
    row_of = {row.id: row for row in rows}
    read = {}
    for cut in iterator:
        row = row_of[cut.custom["source_id"]]
        read[row.id] = cut.load_audio().shape
        assert abs(cut.duration - row.duration_ms / 1000) < 0.01
    assert sorted(read) == sorted(ids)


# --- one big manifest, several groups -----------------------------------------------------


def test_one_manifest_is_dealt_to_groups_and_workers_do_not_change_bytes(
    tmp_path: Path, bundled_corpus: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A single manifest used to be one group whatever --groups and --workers said."""
    rows = bundled_rows(bundled_corpus, 60) + bundled_rows(bundled_corpus, 30, file_index=1)
    manifest = write_manifest_input(rows, tmp_path / "set", [])
    source = str(manifest)
    caplog.set_level("INFO", logger="asrflow.write_shards")
    one = core.write_shards(source, str(tmp_path / "w1"), 6, 0, groups=3, workers=1)
    assert "1 files in 3 groups -> 6 shards, 1 worker(s)" in caplog.text
    three = core.write_shards(source, str(tmp_path / "w3"), 6, 0, groups=3, workers=3)
    assert "1 files in 3 groups -> 6 shards, 3 worker(s)" in caplog.text
    assert one["groups"] == three["groups"] == 3 and one["utterances"] == 90
    assert dataset_bytes(tmp_path / "w1") == dataset_bytes(tmp_path / "w3")
    # every group samples the whole manifest: each shard has lines from its start and its end
    for shard_id in range(6):
        lines = [
            int(e["source_id"][len("wavs/utt") :])
            for e in read_manifest(str(tmp_path / "w1" / f"sharded_manifests/manifest_{shard_id}.json"))
        ]
        assert min(lines) < 30 and max(lines) >= 60, (shard_id, lines)
    # a fan-out over the same groups gives the same bytes
    assert group_specs(source, 3) == ["0/3", "1/3", "2/3"]
    fan = tmp_path / "fan"
    cards = [core.write_shards(source, str(fan), 6, 0, groups=3, group=i) for i in (2, 0, 1)]
    core.merge_groups(source, cards, 0.01)
    assert dataset_bytes(fan) == dataset_bytes(tmp_path / "w1")


def test_a_big_manifest_gets_several_groups_by_default(
    tmp_path: Path, bundled_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = bundled_rows(bundled_corpus, 24)
    manifest = write_manifest_input(rows, tmp_path / "set", [])
    size = manifest.stat().st_size
    monkeypatch.setattr(shard_plan, "MANIFEST_BYTES_PER_GROUP", size // 4 + 1)
    plan = make_plan(open_source(str(manifest)), 8, 0, Rules())
    assert len(plan.groups) == 4 and [g.shard_ids for g in plan.groups][-1] == range(6, 8)
    assert len(make_plan(open_source(str(manifest)), 3, 0, Rules()).groups) == 3  # one per shard at most
    card = core.write_shards(str(manifest), str(tmp_path / "out"), 8, 0, workers=2)
    assert card["groups"] == 4 and card["utterances"] == 24

"""components.sources: resolving INPUTs, streaming items, grouping, exporting eval manifests."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from components import sources, storage
from components.audio import Refusal, Rules, check
from components.columns import Columns
from components.download.card import DownloadCard
from components.export import export_manifest
from components.groups import deal_manifests, split_groups
from components.items import Bad, Item, SourceError
from components.manifest import RejectThresholdExceeded, normalize_text, read_manifest
from components.member_names import MAX_MEMBER_STEM, member_stem
from tests.components.shard_inputs import bundled_rows, write_manifest_input, write_parquet


def test_directory_of_parquet(bundled_corpus: Path) -> None:
    source = sources.open_source(str(bundled_corpus / "clean"))
    assert source.format == sources.PARQUET
    assert [Path(f.uri).name for f in source.files] == [f"train-0000{i}-of-00004.parquet" for i in range(4)]
    items = list(sources.iter_items(source))
    assert len(items) == sources.count_rows(source) == 300
    assert len({item.id for item in items}) == 300
    first = items[0]
    assert isinstance(first, Item)
    assert first.source.endswith("train-00000-of-00004.parquet:row 0")
    assert isinstance(first.text, bytes) and first.text.decode()  # raw bytes, checked later
    assert first.duration is not None and 1.0 < first.duration < 10.0
    assert sf.info(__import__("io").BytesIO(first.audio)).samplerate == 16000


def test_interleaving_alternates_files_in_a_fixed_order(bundled_corpus: Path) -> None:
    source = sources.open_source(str(bundled_corpus / "clean"))
    order = [item.source for item in sources.iter_items(source, interleave=4, batch_rows=5)]
    files_of_first_20 = [s.split(":row")[0][-22:] for s in order[:20]]
    assert files_of_first_20 == [f"train-0000{i % 4}-of-00004.parquet"[-22:] for i in range(20)]
    assert order == [item.source for item in sources.iter_items(source, interleave=4, batch_rows=5)]
    assert sorted(order) == sorted(item.source for item in sources.iter_items(source))
    # two files open at a time: 0 and 1 alternate until both end, then 2 and 3
    narrow = [item.source.split(":row")[0][-22:-17] for item in sources.iter_items(source, interleave=2)]
    assert narrow == ["00000", "00001"] * 75 + ["00002", "00003"] * 75


def test_directory_with_several_splits_needs_split(tmp_path: Path, bundled_corpus: Path) -> None:
    shutil.copy(bundled_corpus / "clean" / "train-00000-of-00004.parquet", tmp_path)
    shutil.copy(bundled_corpus / "validation" / "validation-00000-of-00001.parquet", tmp_path)
    with pytest.raises(SourceError, match="holds the splits train, validation; choose one with --split"):
        sources.open_source(str(tmp_path))
    chosen = sources.open_source(str(tmp_path), split="validation")
    assert [Path(f.uri).name for f in chosen.files] == ["validation-00000-of-00001.parquet"]
    with pytest.raises(SourceError, match="no parquet files for split 'test'"):
        sources.open_source(str(tmp_path), split="test")


def test_missing_input_and_missing_column_are_clear_errors(tmp_path: Path, bundled_corpus: Path) -> None:
    with pytest.raises(SourceError, match="no such directory, manifest or card"):
        sources.open_source(str(tmp_path / "nothing"))
    table = pq.read_table(bundled_corpus / "clean" / "train-00000-of-00004.parquet").drop_columns(["text"])
    bad = tmp_path / "in" / "train-00000-of-00001.parquet"
    bad.parent.mkdir()
    pq.write_table(table, bad)
    with pytest.raises(SourceError, match=r"train-00000-of-00001\.parquet: no column 'text' \(it has"):
        list(sources.iter_items(sources.open_source(str(bad.parent))))


def download_card(
    raw: Path, files: list[str], columns: dict[str, str | None], duration_unit: str | None = None
) -> DownloadCard:
    """The card a download of parquet ``files`` into ``raw`` writes (figures made up)."""
    return DownloadCard(
        out_dir=str(raw), source="src", dataset="ds", config="default", split="train", revision="0" * 40,
        format="parquet", files=files, num_files=len(files), bytes=0, rows=0, hours=0.0,
        columns=columns, duration_unit=duration_unit,
    )  # fmt: skip


def test_download_card_as_file_and_directory_with_column_mapping(
    tmp_path: Path, bundled_corpus: Path
) -> None:
    # a LibriSpeech-like layout: other column names, no duration column
    table = pq.read_table(bundled_corpus / "validation" / "validation-00000-of-00001.parquet")
    renamed = table.rename_columns(["file", "sound", "duration_ms", "sentence"]).drop_columns(["duration_ms"])
    raw = tmp_path / "raw"
    (raw / "data").mkdir(parents=True)
    pq.write_table(renamed, raw / "data" / "part-0.parquet")
    mapping = {"id": "file", "audio": "sound", "text": "sentence", "duration": None}
    download_card(raw, ["data/part-0.parquet"], mapping).write(echo=False)
    for given in (str(raw), str(raw / "card.json")):
        source = sources.open_source(given)
        assert source.columns == Columns(id="file", audio="sound", text="sentence", duration=None)
        items = list(sources.iter_items(source))
        assert len(items) == 60 and all(item.duration is None for item in items)
        assert items[0].id == table.column("id")[0].as_py()
    # a card of another step, or one without a required field, is named as such
    (raw / "card.json").write_text(json.dumps({"step": "write-shards", "out_dir": str(raw)}))
    with pytest.raises(SourceError, match=r"card.json: a write-shards card, expected a download card"):
        sources.open_source(str(raw / "card.json"))
    (raw / "card.json").write_text(json.dumps({"step": "download", "out_dir": str(raw)}))
    with pytest.raises(SourceError, match=r"card.json: the download card has no source, "):
        sources.open_source(str(raw / "card.json"))
    bad_unit = download_card(raw, ["data/part-0.parquet"], mapping, duration_unit="h").to_dict()
    (raw / "card.json").write_text(json.dumps(bad_unit))
    with pytest.raises(SourceError, match=r"card.json: duration unit must be ms or s, got 'h'"):
        sources.open_source(str(raw / "card.json"))


def test_manifest_input_resolves_relative_paths_and_names_bad_lines(
    tmp_path: Path, bundled_corpus: Path
) -> None:
    rows = bundled_rows(bundled_corpus, 4)
    absolute = tmp_path / "elsewhere.flac"
    absolute.write_bytes(rows[0].audio)
    extra = [
        b"",  # blank lines are skipped
        b'{"audio_filepath": "wavs/utt000.flac", "text": "no closing brace"',
        b'{"audio_filepath": "wavs/missing.flac", "duration": 1.0, "text": "gone"}',
        json.dumps({"audio_filepath": str(absolute), "duration": 2.0, "text": "absolute"}).encode(),
        b'{"audio_filepath": "wavs/utt001.flac", "duration": 2.0, "text": "caf\xe9"}',
        b'["a list"]',
        b'{"audio_filepath": "wavs/utt002.flac", "duration": "long", "text": "x"}',
        json.dumps(
            {"audio_filepath": "wavs/utt003.flac", "offset": 0.5, "duration": 0.75, "text": "cut"}
        ).encode(),
    ]
    manifest = write_manifest_input(rows, tmp_path / "set", extra)
    source = sources.open_source(str(manifest))
    assert source.format == sources.MANIFEST
    items = list(sources.iter_items(source))
    good = [item for item in items if isinstance(item, Item)]
    bad = {item.source.rsplit(":", 1)[1]: item for item in items if isinstance(item, Bad)}
    assert [item.id for item in good[:4]] == [f"wavs/utt00{i}" for i in range(4)]
    assert good[0].extra == {"speaker": 0} and good[0].audio == rows[0].audio
    assert good[0].duration == rows[0].duration_ms / 1000
    assert {line: (b.reason, b.detail.split(" (")[0]) for line, b in bad.items()} == {
        "line 6": ("manifest_malformed", "not valid JSON"),
        "line 7": ("audio_missing", f"no such file: {tmp_path / 'set' / 'wavs' / 'missing.flac'}"),
        "line 10": ("manifest_malformed", "not a JSON object but list"),
        "line 11": ("manifest_malformed", "field duration must be a number of seconds"),
    }
    by_text = {item.text: item for item in good}
    assert by_text["absolute"].audio == rows[0].audio
    assert isinstance(
        check(None, by_text[next(t for t in by_text if "caf" in t)].text, None, Rules()), Refusal
    )
    cut = by_text["cut"]
    assert cut.id == "wavs/utt003-0.50"
    assert sf.info(__import__("io").BytesIO(cut.audio)).frames == 12000  # 0.75 s at 16 kHz


def test_split_groups_is_balanced_and_deterministic() -> None:
    files = [storage.FileInfo(f"f{i:02d}", size) for i, size in enumerate([90, 10, 40, 40, 30, 30, 20, 20])]
    groups = split_groups(files, 3)
    assert groups == split_groups(list(reversed(files)), 3)
    assert sorted(f.uri for g in groups for f in g) == [f.uri for f in files]
    loads = sorted(sum(f.size for f in g) for g in groups)
    assert loads == [90, 90, 100]
    assert all([f.uri for f in g] == sorted(f.uri for f in g) for g in groups)
    assert len(split_groups(files[:2], 5)) == 2


def test_member_stem_is_safe_for_tars_and_nemo() -> None:
    stem = member_stem("a/b.c/d e.flac")
    assert stem.startswith("a_b_c_d_e-") and len(stem) == len("a_b_c_d_e-") + 16
    assert member_stem("x" * 500) != member_stem("x" * 499)
    assert len(member_stem("x" * 500)) == MAX_MEMBER_STEM
    for item_id in ("a/b.c/d e.flac", "x" * 500, "é", "a.b", "", "x.flac"):
        assert re.fullmatch(r"[A-Za-z0-9_-]{1,160}", member_stem(item_id)), item_id


def test_member_stems_are_injective_and_keep_safe_ids() -> None:
    """Sanitising used to map a.b and a_b (and x and x.flac, x/y and x_y) to one member name."""
    # ids that are already safe member names keep them (LibriSpeech ids, most datasets')
    for item_id in ("a_b", "1089-134686-0000", "utt_001", "X" * MAX_MEMBER_STEM):
        assert member_stem(item_id) == item_id
    colliding = [
        "a.b", "a_b", "a b", "a/b", "a-b", "x", "x.flac", "x.FLAC", "x.wav", "x/y", "x_y", "é", "è",
        "a_b-0123456789abcdef",  # looks like an escaped stem: escaped itself
        "y" * 200, "y" * 201, "y" * 143 + "z" * 60,
    ]  # fmt: skip
    colliding.append(member_stem("a.b"))  # an id equal to another id's escaped stem
    stems = [member_stem(item_id) for item_id in colliding]
    assert len(set(stems)) == len(colliding), stems
    assert member_stem("a_b-0123456789abcdef") != "a_b-0123456789abcdef"


def test_fingerprint_is_the_content_not_the_spelling(
    tmp_path: Path, bundled_corpus: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``dir`` and ``/abs/dir`` (and a copy elsewhere) are the same input; other bytes are not."""
    shutil.copytree(bundled_corpus / "clean", tmp_path / "a" / "clean")
    shutil.copytree(bundled_corpus / "clean", tmp_path / "b" / "copy")
    monkeypatch.chdir(tmp_path / "a")
    relative = sources.open_source("clean")
    assert relative.uri == str(tmp_path / "a" / "clean")
    for spelling in (str(tmp_path / "a" / "clean"), "./clean/", str(tmp_path / "b" / "copy")):
        assert sources.open_source(spelling).fingerprint() == relative.fingerprint(), spelling
    (tmp_path / "a" / "clean" / "train-00003-of-00004.parquet").unlink()
    assert sources.open_source("clean").fingerprint() != relative.fingerprint()

    rows = bundled_rows(bundled_corpus, 3)
    manifest = write_manifest_input(rows, tmp_path / "m", [])
    first = sources.open_source(str(manifest)).fingerprint()
    monkeypatch.chdir(tmp_path)
    assert sources.open_source("m/manifest.json").fingerprint() == first
    text = manifest.read_bytes()
    manifest.write_bytes(text.replace(b'"speaker": 1', b'"speaker": 2'))  # same size, other bytes
    assert len(manifest.read_bytes()) == len(text)
    assert sources.open_source(str(manifest)).fingerprint() != first


def test_dealing_a_manifest_gives_every_item_to_one_group(tmp_path: Path, bundled_corpus: Path) -> None:
    rows = bundled_rows(bundled_corpus, 10)
    manifest = write_manifest_input(rows, tmp_path / "set", [b"", b"{broken"])
    source = sources.open_source(str(manifest))
    whole = [(item.source, item.id) for item in sources.iter_items(source)]
    assert len(whole) == 11
    groups = deal_manifests(source.files, 3)
    assert groups == deal_manifests(source.files, 3)  # deterministic
    dealt = [[(item.source, item.id) for item in sources.iter_items(source, parts)] for parts in groups]
    assert [len(items) for items in dealt] == [4, 4, 3]
    assert sorted(x for items in dealt for x in items) == sorted(whole)
    assert dealt[1][0] == whole[1] and dealt[2][1] == whole[5]  # items g, g+3, g+6, ...
    assert dealt[1][-1][0].endswith(":line 12")  # line numbers count the blank line too


def test_export_manifest_of_the_bundled_validation_split(
    bundled_eval_manifest: Path, bundled_corpus: Path
) -> None:
    entries = read_manifest(str(bundled_eval_manifest))
    table = pq.read_table(bundled_corpus / "validation" / "validation-00000-of-00001.parquet").to_pylist()
    assert len(entries) == len(table) == 60
    for entry, row in zip(entries, table, strict=True):
        path = bundled_eval_manifest.parent / entry["audio_filepath"]
        info = sf.info(path)
        assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)
        assert entry["duration"] == info.frames / 16000
        assert abs(entry["duration"] - row["duration_ms"] / 1000) < 0.01
        assert entry["text"] == normalize_text(row["text"]) and entry["source_id"] == row["id"]
    assert (bundled_eval_manifest.parent / "_SUCCESS").exists()
    # a finished export is returned as it is
    assert export_manifest(str(bundled_corpus / "validation"), str(bundled_eval_manifest.parent)) == str(
        bundled_eval_manifest
    )


def test_export_manifest_converts_and_rejects(tmp_path: Path, bundled_corpus: Path) -> None:
    from tests.components.shard_inputs import bad_rows

    valid = bundled_rows(bundled_corpus, 12)
    rows = valid + bad_rows(valid)
    write_parquet(rows, tmp_path / "in" / "test-00000-of-00001.parquet")
    with pytest.raises(RejectThresholdExceeded, match=r"export-manifest: rejected 7 of 23 items"):
        export_manifest(str(tmp_path / "in"), str(tmp_path / "strict"))
    assert not (tmp_path / "strict" / "_SUCCESS").exists()
    manifest = export_manifest(str(tmp_path / "in"), str(tmp_path / "out"), max_reject_fraction=0.5)
    entries = read_manifest(manifest)
    kept = {entry["source_id"] for entry in entries}
    # no duration filter for evaluation: long and short audio are kept; 8 kHz and stereo converted
    assert kept == {r.id for r in valid} | {"bad/8khz", "bad/stereo", "bad/too-long", "bad/too-short"}
    for entry in entries:
        info = sf.info(tmp_path / "out" / entry["audio_filepath"])
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
    rejected = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["reason"]) for r in rejected) == sorted(
        (r.id, r.reason)
        for r in rows[len(valid) :]
        if r.reason not in ("sample_rate", "channels", "too_long", "too_short")
    )


def test_gcs_parquet_input(gcs_bucket: str, bundled_corpus: Path) -> None:
    local = bundled_corpus / "clean" / "train-00001-of-00004.parquet"
    uri = f"{gcs_bucket}/ps/clean/{local.name}"
    storage.upload_file(local, uri)
    source = sources.open_source(f"{gcs_bucket}/ps/clean")
    assert [f.uri for f in source.files] == [uri]
    remote = [(i.id, i.audio, i.text) for i in sources.iter_items(source)]
    here = [
        (i.id, i.audio, i.text)
        for i in sources.iter_items(
            sources.open_source(str(local.parent)), [storage.FileInfo(str(local), local.stat().st_size)]
        )
    ]
    assert remote == here and len(remote) == 75


def test_binary_text_column_is_decoded_per_row(tmp_path: Path, bundled_corpus: Path) -> None:
    table = pq.read_table(bundled_corpus / "validation" / "validation-00000-of-00001.parquet").slice(0, 3)
    texts = pa.array([b"ok", b"\xff\xfe", None], pa.binary())
    table = table.set_column(3, "text", texts)
    pq.write_table(table, tmp_path / "x.parquet")
    items = list(sources.iter_items(sources.open_source(str(tmp_path))))
    assert [check(i.audio, i.text, i.duration, Rules()) for i in items][1:] == [
        Refusal("text_not_utf8", "byte 0: invalid start byte"),
        Refusal("text_empty", "no text"),
    ]

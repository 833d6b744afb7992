"""components.storage on local paths and on gs:// against a real emulator server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import google_crc32c
import pytest

from components import outputs, storage


@pytest.fixture(params=["local", "gcs"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh directory: a local one, or a prefix in a fresh emulator bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return request.getfixturevalue("gcs_bucket") + "/root"


def _crc32c_hex(data: bytes) -> str:
    checksum = google_crc32c.Checksum()
    checksum.update(data)
    return checksum.digest().hex()


def _relative(root: str, infos: list[storage.FileInfo]) -> list[str]:
    return [info.uri[len(root) + 1 :].replace(os.sep, "/") for info in infos]


def test_write_read_roundtrip(root: str) -> None:
    uri = storage.join(root, "a", "b.bin")
    assert not storage.exists(uri)
    storage.write_bytes(uri, b"\x00\x01payload")
    assert storage.exists(uri)
    assert storage.read_bytes(uri) == b"\x00\x01payload"
    storage.write_text(uri, "héllo\n")
    assert storage.read_text(uri) == "héllo\n"


def test_streaming_read_and_resumable_upload_in_many_chunks(
    root: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 256 KiB is the smallest chunk GCS accepts: 1 MiB + 5 bytes takes five upload requests.
    monkeypatch.setattr(storage, "CHUNK_BYTES", 256 * 1024)
    data = os.urandom(4 * 256 * 1024 + 5)
    local = tmp_path / "big.bin"
    local.write_bytes(data)
    uri = storage.join(root, "big.bin")
    storage.upload_file(local, uri)
    chunks = []
    with storage.open_read(uri) as stream:
        while chunk := stream.read(100_000):
            assert len(chunk) <= 100_000
            chunks.append(chunk)
    assert len(chunks) == 11
    assert b"".join(chunks) == data
    copy = tmp_path / "copy.bin"
    storage.download_file(uri, copy)
    assert copy.read_bytes() == data


def test_atomic_writer_leaves_nothing_on_exception(root: str) -> None:
    uri = storage.join(root, "dir", "file.txt")
    with pytest.raises(RuntimeError, match="boom"), storage.atomic_writer(uri) as out:
        out.write(b"half of it")
        raise RuntimeError("boom")
    assert not storage.exists(uri)
    if not storage.is_gcs(root):
        assert os.listdir(Path(uri).parent) == []
    else:
        assert storage.list_files(root) == []


def test_atomic_writer_keeps_old_contents_on_exception(root: str) -> None:
    uri = storage.join(root, "file.txt")
    storage.write_text(uri, "old")
    with pytest.raises(ValueError), storage.atomic_writer(uri) as out:
        out.write(b"new but broken")
        raise ValueError
    assert storage.read_text(uri) == "old"
    assert _relative(root, storage.list_files(root)) == ["file.txt"]


def test_list_files_sorted_recursive_and_filtered(root: str) -> None:
    for name in ["b/2.parquet", "a/z/9.parquet", "a/1.parquet", "c.txt", "b/10.parquet"]:
        storage.write_bytes(storage.join(root, name), name.encode())
    # A sibling whose name starts with the listed prefix must not leak into the listing.
    storage.write_bytes(root + "-sibling/x.parquet", b"x")
    infos = storage.list_files(root)
    assert _relative(root, infos) == ["a/1.parquet", "a/z/9.parquet", "b/10.parquet", "b/2.parquet", "c.txt"]
    assert [info.size for info in infos] == [len(name) for name in _relative(root, infos)]
    assert _relative(root, storage.list_files(root, suffix=".parquet")) == [
        "a/1.parquet",
        "a/z/9.parquet",
        "b/10.parquet",
        "b/2.parquet",
    ]
    assert storage.list_files(storage.join(root, "a", "z")) == [
        storage.FileInfo(storage.join(root, "a", "z", "9.parquet"), 13, *_checksums(root, b"a/z/9.parquet"))
    ]


def _checksums(root: str, data: bytes) -> tuple[str | None, str | None]:
    if storage.is_gcs(root):
        return hashlib.md5(data).hexdigest(), _crc32c_hex(data)
    return None, None


def test_list_files_skips_local_temporaries(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / ".tmp-staging" / "sub").mkdir(parents=True)
    (root / ".tmp-staging" / "sub" / "x.parquet").write_bytes(b"partial")
    (root / ".tmp-y.parquet.abc").write_bytes(b"partial")
    (root / "y.parquet").write_bytes(b"whole")
    assert _relative(str(root), storage.list_files(str(root))) == ["y.parquet"]


def test_list_files_of_missing_local_directory_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no such directory"):
        storage.list_files(str(tmp_path / "nope"))


def test_create_only_upload(root: str, tmp_path: Path) -> None:
    first = tmp_path / "first"
    first.write_bytes(b"first contents")
    same = tmp_path / "same"
    same.write_bytes(b"first contents")
    other = tmp_path / "other"
    other.write_bytes(b"other contents")
    uri = storage.join(root, "obj.bin")
    storage.upload_file(first, uri)
    storage.upload_file(same, uri)  # a rerun with the same bytes is fine
    if storage.is_gcs(root):
        with pytest.raises(FileExistsError, match="already exists with other contents"):
            storage.upload_file(other, uri)
        assert storage.read_bytes(uri) == b"first contents"
    storage.upload_file(other, uri, overwrite=True)
    assert storage.read_bytes(uri) == b"other contents"


def test_stat_sizes_and_checksums(root: str) -> None:
    assert storage.stat(storage.join(root, "missing")) is None
    data = b"some bytes " * 1000
    uri = storage.join(root, "x", "data.bin")
    storage.write_bytes(uri, data)
    info = storage.stat(uri)
    assert info is not None
    assert info.uri == uri
    assert info.size == len(data)
    assert (info.md5, info.crc32c) == _checksums(root, data)
    empty = storage.join(root, "empty")
    storage.write_bytes(empty, b"")
    assert storage.stat(empty) == storage.FileInfo(empty, 0, *_checksums(root, b""))


def test_local_checksum_helpers(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc" * 100)
    assert storage.file_md5(path) == hashlib.md5(b"abc" * 100).hexdigest()
    assert storage.file_crc32c(path) == _crc32c_hex(b"abc" * 100)


def test_delete(root: str) -> None:
    uri = storage.join(root, "gone")
    storage.write_bytes(uri, b"x")
    storage.delete(uri)
    assert not storage.exists(uri)
    storage.delete(uri)  # deleting what is not there is not an error


def test_success_marker(root: str) -> None:
    storage.makedirs(root)
    assert not storage.is_complete(root)
    storage.mark_complete(root, "3 files")
    assert storage.is_complete(root)
    assert storage.read_text(storage.join(root, storage.SUCCESS_MARKER)) == "3 files"


def test_uri_helpers() -> None:
    assert storage.join("gs://b/x/", "y", "/z") == "gs://b/x/y/z"
    assert storage.split_gcs("gs://bucket/a/b") == ("bucket", "a/b")
    assert storage.split_gcs("gs://bucket") == ("bucket", "")
    assert storage.basename("gs://b/a/c.parquet") == "c.parquet"
    assert storage.parent("gs://b/a/c.parquet") == "gs://b/a"
    with pytest.raises(ValueError, match="without a bucket"):
        storage.split_gcs("gs:///a")
    with pytest.raises(ValueError, match="not a gs:// URI"):
        storage.split_gcs("/local/path")


# --- guarding output directories ------------------------------------------------------------


def test_claim_output_refuses_a_directory_that_holds_other_files(root: str) -> None:
    out = storage.join(root, "out")
    storage.write_text(storage.join(out, "notes", "todo.txt"), "mine, not asrflow's\n")
    with pytest.raises(outputs.ForeignOutput) as refused:
        outputs.claim_output(out, "write-shards")
    message = str(refused.value)
    assert (
        message.startswith(f"{out} is not empty and holds no write-shards run")
        and "notes/todo.txt" in message
    )
    assert not storage.exists(storage.join(out, outputs.OWNER_MARKER))

    fresh = storage.join(root, "fresh")
    storage.write_text(storage.join(fresh, f"{storage.TEMP_PREFIX}x.abc"), "a killed run's temporary")
    outputs.claim_output(fresh, "write-shards")  # temporaries (and locks) do not count
    assert storage.read_text(storage.join(fresh, outputs.OWNER_MARKER)) == '{"step": "write-shards"}\n'
    storage.write_text(storage.join(fresh, "audio_0.tar"), "ours now")
    outputs.claim_output(fresh, "write-shards")  # a rerun of the same step
    with pytest.raises(outputs.ForeignOutput, match="holds the output of write-shards, not of download"):
        outputs.claim_output(fresh, "download")

    legacy = storage.join(root, "legacy")  # finished before the marker existed: its card says so
    storage.write_text(storage.join(legacy, "card.json"), '{"step": "download"}')
    storage.write_text(storage.join(legacy, "clean", "train-00000-of-00001.parquet"), "data")
    outputs.claim_output(legacy, "download")
    with pytest.raises(outputs.ForeignOutput):
        outputs.claim_output(storage.join(root, "out"), "download")


def test_claim_output_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(outputs.ForeignOutput, match="is a file, not a directory"):
        outputs.claim_output(str(tmp_path / "file"), "download")


HOLD = """
import sys, time
from components import outputs
lock = outputs.Lock(sys.argv[1], "write-shards").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_a_second_writer_fails_at_once_naming_the_holder_and_a_dead_holder_is_replaced(root: str) -> None:
    import signal
    import subprocess
    import sys
    import time

    uri = outputs.lock_uri(storage.join(root, "out"))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, uri], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        started = time.monotonic()
        with pytest.raises(outputs.LockHeld) as held:
            outputs.Lock(uri, "write-shards").acquire()
        assert time.monotonic() - started < 5
        message = str(held.value)
        assert f"pid {holder.pid}" in message and "write-shards on host" in message
        assert message.startswith(f"{storage.join(root, 'out')} is being written by another run")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # locally the kernel dropped the dead holder's lock; on GCS its object names a dead process
    with outputs.locked(uri, "write-shards") as lock:
        assert lock.holder.pid == os.getpid()
        with pytest.raises(outputs.LockHeld):
            outputs.Lock(uri, "write-shards").acquire()  # held by this process: still exclusive
    assert not storage.exists(uri)  # released: nothing left behind
    with outputs.locked(uri, "write-shards"):
        pass


def _fake_holder(host: str, pid: int, refreshed_ago: float) -> bytes:
    import time

    now = time.time()
    return outputs.Holder("write-shards", host, pid, 0.0, now - 3600, now - refreshed_ago, "t").encode()


def test_gcs_lock_stale_rules(gcs_bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    uri = outputs.lock_uri(f"{gcs_bucket}/out")
    # a live writer on another machine: refused at once
    storage.write_bytes(uri, _fake_holder("other-node", 7, refreshed_ago=5))
    with pytest.raises(
        outputs.LockHeld, match="write-shards on host other-node, pid 7, since .*last seen 5 s ago"
    ):
        outputs.Lock(uri, "write-shards").acquire()
    # silent for longer than STALE_AFTER_S (a preempted node): taken over
    storage.write_bytes(uri, _fake_holder("other-node", 7, refreshed_ago=outputs.STALE_AFTER_S + 5))
    with outputs.locked(uri, "write-shards") as lock:
        assert outputs.Holder.decode(storage.read_bytes(uri)).token == lock.holder.token
    # a process of this machine that has ended: taken over at once
    storage.write_bytes(uri, _fake_holder(__import__("socket").gethostname(), 2**22 + 17, refreshed_ago=0))
    with outputs.locked(uri, "write-shards"):
        pass
    # quiet for more than a heartbeat and a half: waited for until stale, then taken over
    monkeypatch.setattr(outputs, "HEARTBEAT_S", 0.5)
    monkeypatch.setattr(outputs, "STALE_AFTER_S", 3.0)
    storage.write_bytes(uri, _fake_holder("other-node", 7, refreshed_ago=1.0))
    started = time.monotonic()
    with outputs.locked(uri, "write-shards") as lock:
        assert 1.0 < time.monotonic() - started < 10
        time.sleep(1.5)  # the holder refreshes its lock meanwhile
        held = outputs.Holder.decode(storage.read_bytes(uri))
        assert held.token == lock.holder.token and held.refreshed > held.acquired
    assert not storage.exists(uri)


def test_gcs_writes_stage_under_the_lock_and_a_rerun_cleans_them(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    out = f"{gcs_bucket}/out"
    uri = outputs.lock_uri(out)
    staging = Path(outputs.staging_dir(uri))
    assert staging.is_relative_to(tmp_path / "tmp")
    staging.mkdir(parents=True)
    leftover = staging / f"{storage.TEMP_PREFIX}left-by-a-killed-run"
    leftover.write_bytes(b"x" * 1000)
    with outputs.locked(uri, "write-shards"):
        assert not leftover.exists()  # the new holder removed it
        with storage.atomic_writer(f"{out}/a.bin") as stream:
            stream.write(b"payload")
            stream.flush()
            assert [p.name[: len(storage.TEMP_PREFIX)] for p in staging.iterdir()] == [storage.TEMP_PREFIX]
        assert not list(staging.iterdir())
    assert storage.read_bytes(f"{out}/a.bin") == b"payload"
    assert not staging.exists()
    assert not [p for p in (tmp_path / "tmp").rglob("*") if p.is_file()]

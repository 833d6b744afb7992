"""components.storage on local paths and on gs:// against a real emulator server."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import google_crc32c
import pytest

from components import storage


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

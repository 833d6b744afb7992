"""One I/O layer for local paths and ``gs://bucket/prefix`` URIs.

Local writes go to a temporary name in the target directory and are renamed into place.
GCS writes are create-only uploads (``if_generation_match=0``) with a CRC32C checksum the
server verifies, so a reader never sees a half-written object. The emulator used by the
tests is reached the way the real client reaches it: ``STORAGE_EMULATOR_HOST``.

Output directories are guarded by :mod:`components.outputs` (``claim_output``, ``locked``): a step writes only
into an empty directory or one that holds an earlier run of the same step (the
``_ASRFLOW`` marker), and only while it holds the directory's lock: ``fcntl.flock`` on a lock
file locally, a create-only lock object on GCS that names its holder (host, pid, time) and
is refreshed while held. The local staging files of GCS writes go to a directory of the
lock's own (:func:`components.outputs.staging_dir`), which the next holder of the lock empties
first, so a killed run leaves nothing behind for long.
"""

from __future__ import annotations

import base64
import contextlib
import contextvars
import dataclasses
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("asrflow.storage")

GCS_SCHEME = "gs://"
CHUNK_BYTES = 8 * 1024 * 1024


@dataclasses.dataclass(frozen=True)
class FileInfo:
    """A file found by :func:`list_files` or :func:`stat`."""

    uri: str
    size: int
    md5: str | None = None  # hex digest where the store keeps one (GCS); None for local files
    crc32c: str | None = None  # hex, big-endian, where the store keeps one (GCS; composites have no MD5)


def is_gcs(uri: str) -> bool:
    return uri.startswith(GCS_SCHEME)


def join(base: str, *parts: str) -> str:
    """Join path parts with '/', for local paths and gs:// URIs alike."""
    if not is_gcs(base):
        return str(Path(base, *parts))
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def basename(uri: str) -> str:
    return uri.rstrip("/").rsplit("/", 1)[-1]


def parent(uri: str) -> str:
    if not is_gcs(uri):
        return str(Path(uri).parent)
    return uri.rstrip("/").rsplit("/", 1)[0]


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> (``bucket``, ``a/b``)."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, name = uri[len(GCS_SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, name


_client: Any = None


def gcs_client() -> Any:
    """The google-cloud-storage client, made once per process.

    With ``STORAGE_EMULATOR_HOST`` set the library talks to that server and needs no
    credentials; on GKE it uses Workload Identity through the default credentials.
    """
    global _client
    if _client is None:
        from google.cloud import storage

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _client = storage.Client(project="asrflow-emulator", credentials=AnonymousCredentials())
        else:
            _client = storage.Client()
    return _client


def reset_gcs_client() -> None:
    """Forget the cached client (tests that point at a new emulator call this)."""
    global _client
    _client = None


def _blob(uri: str) -> Any:
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def exists(uri: str) -> bool:
    if is_gcs(uri):
        return bool(_blob(uri).exists())
    return Path(uri).exists()


def stat(uri: str) -> FileInfo | None:
    """Size (and MD5 on GCS) of one file, or None when it does not exist."""
    if is_gcs(uri):
        bucket, name = split_gcs(uri)
        blob = gcs_client().bucket(bucket).get_blob(name)
        if blob is None:
            return None
        return FileInfo(uri, int(blob.size), _md5_hex(blob.md5_hash), _md5_hex(blob.crc32c))
    path = Path(uri)
    if not path.is_file():
        return None
    return FileInfo(uri, path.stat().st_size)


def _md5_hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


def list_files(uri: str, suffix: str = "") -> list[FileInfo]:
    """Every file below ``uri`` (recursively) whose name ends with ``suffix``, sorted by URI.

    Temporary files (and anything inside a temporary directory) are never listed.
    """
    if is_gcs(uri):
        bucket, prefix = split_gcs(uri)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        found = [
            FileInfo(
                f"{GCS_SCHEME}{bucket}/{blob.name}",
                int(blob.size),
                _md5_hex(blob.md5_hash),
                _md5_hex(blob.crc32c),
            )
            for blob in gcs_client().list_blobs(bucket, prefix=prefix)
            if blob.name.endswith(suffix) and not blob.name.endswith("/")
        ]
    else:
        root = Path(uri)
        if not root.is_dir():
            raise FileNotFoundError(f"no such directory: {uri}")
        found = [
            FileInfo(str(p), p.stat().st_size)
            for p in root.rglob("*")
            if p.is_file()
            and p.name.endswith(suffix)
            and not any(is_temp(part) for part in p.relative_to(root).parts)
        ]
    return sorted(found, key=lambda info: info.uri)


def open_read(uri: str) -> IO[bytes]:
    """A binary stream over a file; GCS objects are read in chunks, never whole."""
    if is_gcs(uri):
        return _blob(uri).open("rb", chunk_size=CHUNK_BYTES)
    return open(uri, "rb")


def read_bytes(uri: str) -> bytes:
    with open_read(uri) as stream:
        return stream.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


TEMP_PREFIX = ".tmp-"


def is_temp(name: str) -> bool:
    return name.startswith(TEMP_PREFIX)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_NEW_FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_writer(uri: str) -> Iterator[IO[bytes]]:
    """Write a file so that readers see all of it or none of it.

    Locally: a temporary file beside the target, fsync, then rename. On GCS: a local
    temporary file uploaded on success with :func:`upload_file` (create-only, checksummed).
    If the body raises, nothing is left at ``uri``. The local file of a GCS write goes to the
    staging directory of the lock held (:func:`components.outputs.locked`), else to the system's
    temp directory.
    """
    if is_gcs(uri):
        staging = _STAGING.get()
        if staging is not None:
            os.makedirs(staging, exist_ok=True)
        with tempfile.NamedTemporaryFile(prefix=TEMP_PREFIX, dir=staging, delete=True) as tmp:
            yield tmp
            tmp.flush()
            upload_file(tmp.name, uri, overwrite=True)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=TEMP_PREFIX + target.name + ".", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as tmp:
            yield tmp
            tmp.flush()
            os.fsync(tmp.fileno())
            os.fchmod(tmp.fileno(), _NEW_FILE_MODE)  # mkstemp makes 0600; readers need what open() gives
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def write_bytes(uri: str, data: bytes) -> None:
    """Atomically write ``data`` to ``uri`` (replacing what was there)."""
    with atomic_writer(uri) as out:
        out.write(data)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def upload_file(local_path: str | os.PathLike[str], uri: str, overwrite: bool = False) -> None:
    """Copy a local file to ``uri``.

    On GCS the upload is resumable and carries a CRC32C checksum that the server checks; it
    is create-only unless ``overwrite``: an object that already exists with the same MD5 is
    left as it is (a rerun), one with other bytes is an error. The object is looked up first
    (so a rerun uploads nothing) and the upload itself is conditional on no object existing
    (``if_generation_match=0``), which settles a race with another writer on the server.
    """
    if not is_gcs(uri):
        with open(local_path, "rb") as src, atomic_writer(uri) as dst:
            shutil.copyfileobj(src, dst, CHUNK_BYTES)
        return
    from google.api_core.exceptions import PreconditionFailed

    if not overwrite:
        existing = stat(uri)
        if existing is not None:
            if _same_contents(existing, local_path):
                return
            raise FileExistsError(f"{uri} already exists with other contents")
    blob = _blob(uri)
    blob.chunk_size = CHUNK_BYTES
    try:
        blob.upload_from_filename(
            str(local_path),
            if_generation_match=None if overwrite else 0,
            checksum="crc32c",
        )
    except PreconditionFailed:
        existing = stat(uri)
        if existing is None or not _same_contents(existing, local_path):
            raise FileExistsError(f"{uri} already exists with other contents") from None


def _same_contents(existing: FileInfo, local_path: str | os.PathLike[str]) -> bool:
    if existing.size != os.path.getsize(local_path):
        return False
    if existing.md5 is not None:
        return existing.md5 == file_md5(local_path)
    return existing.crc32c is not None and existing.crc32c == file_crc32c(local_path)


def download_file(uri: str, local_path: str | os.PathLike[str]) -> None:
    """Copy ``uri`` to a local file, atomically."""
    with open_read(uri) as src, atomic_writer(str(local_path)) as dst:
        shutil.copyfileobj(src, dst, CHUNK_BYTES)


def file_md5(path: str | os.PathLike[str]) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_crc32c(path: str | os.PathLike[str]) -> str:
    """CRC32C of a local file as hex, the form :attr:`FileInfo.crc32c` uses."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(CHUNK_BYTES), b""):
            checksum.update(chunk)
    return checksum.digest().hex()


def delete(uri: str) -> None:
    """Remove one file; a missing file is not an error."""
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            _blob(uri).delete()
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(uri)


def makedirs(uri: str) -> None:
    """Create a local directory (GCS has no directories: nothing to do)."""
    if not is_gcs(uri):
        Path(uri).mkdir(parents=True, exist_ok=True)


SUCCESS_MARKER = "_SUCCESS"


def is_complete(directory: str) -> bool:
    """True when ``directory`` holds the ``_SUCCESS`` marker a finished step writes last."""
    return exists(join(directory, SUCCESS_MARKER))


def mark_complete(directory: str, text: str = "") -> None:
    write_text(join(directory, SUCCESS_MARKER), text)


_STAGING: contextvars.ContextVar[str | None] = contextvars.ContextVar("asrflow_staging", default=None)


@contextlib.contextmanager
def staging_in(directory: str) -> Iterator[None]:
    """In the body, the local files of GCS writes (:func:`atomic_writer`) go to ``directory``."""
    token = _STAGING.set(directory)
    try:
        yield
    finally:
        _STAGING.reset(token)

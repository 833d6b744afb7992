"""Output directories, guarded: a step writes only into its own directory, while it holds its lock.

A step writes only into an empty directory or one that holds an earlier run of the same step
(the ``_ASRFLOW`` marker, :func:`claim_output`), and only while it holds the directory's lock
(:func:`locked`): ``fcntl.flock`` on a lock file locally, a create-only lock object on GCS that
names its holder (host, pid, time) and is refreshed while held, taken over once stale. While
the lock is held the local staging files of GCS writes go to a directory of the lock's own,
which the next holder empties first.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from components import layout, storage

log = logging.getLogger("asrflow.storage")

# --- guarding output directories ----------------------------------------------------------

OWNER_MARKER = layout.OWNER_MARKER
"""Names the step whose output a directory is: ``{"step": "write-shards"}``."""
LOCK_SUFFIX = ".lock"
HEARTBEAT_S = 15.0
"""How often the holder of a GCS lock refreshes it."""
STALE_AFTER_S = 60.0
"""A GCS lock not refreshed for this long belongs to a dead process and may be taken over
(a preempted pod's retry on another node waits at most this long)."""
STAGING_ROOT = "asrflow-staging"


class OutputError(RuntimeError):
    """An output directory that cannot be written now; the message says why and what to do."""


class ForeignOutput(OutputError):
    """The directory is not empty and holds no earlier run of this step."""


class LockHeld(OutputError):
    """Another process holds the lock; the message names it."""


def lock_uri(directory: str, name: str = "asrflow") -> str:
    """The lock file (object) ``name`` of a directory: hidden from listings like temporaries."""
    return storage.join(directory, f"{storage.TEMP_PREFIX}{name}{LOCK_SUFFIX}")


def is_lock_name(name: str) -> bool:
    return storage.is_temp(name) and name.endswith(LOCK_SUFFIX)


def staging_dir(lock: str) -> str:
    """This machine's directory for the local files of GCS writes made under ``lock``."""
    tag = hashlib.sha256(lock.encode("utf-8")).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), STAGING_ROOT, tag)


def claim_output(directory: str, step: str) -> None:
    """Check that ``step`` may write into ``directory``, and mark it as that step's output.

    Allowed: a directory that does not exist, is empty, or holds an earlier run of ``step``
    (its ``_ASRFLOW`` marker, or for outputs older than the marker a ``card.json`` of
    ``step``). Temporary files and locks do not count. Call it while holding the lock.

    Raises:
        ForeignOutput: the directory holds other files, or another step's output.
    """
    owner = owner_of(directory)
    if owner is not None:
        if owner != step:
            raise ForeignOutput(
                f"{directory} holds the output of {owner}, not of {step}; choose another output directory"
            )
        return
    if not storage.is_gcs(directory) and os.path.exists(directory) and not os.path.isdir(directory):
        raise ForeignOutput(f"{directory} is a file, not a directory")
    foreign = _first_foreign_file(directory)
    if foreign is not None:
        if not _is_card_of(storage.join(directory, layout.CARD_NAME), step):
            raise ForeignOutput(
                f"{directory} is not empty and holds no {step} run of asrflow (it has {foreign}, "
                f"and no {OWNER_MARKER} marker); write to an empty or new directory, or empty this one"
            )
    storage.write_text(storage.join(directory, OWNER_MARKER), json.dumps({"step": step}) + "\n")


def _is_card_of(card_uri: str, step: str) -> bool:
    """True when ``card_uri`` is a card written by ``step`` (an output made before the marker)."""
    if not storage.exists(card_uri):
        return False
    try:
        card = json.loads(storage.read_text(card_uri))
    except ValueError:
        return False
    return isinstance(card, dict) and card.get("step") == step


def owner_of(directory: str) -> str | None:
    """The step whose output ``directory`` is, by its ``_ASRFLOW`` marker; None without one."""
    marker = storage.join(directory, OWNER_MARKER)
    if not storage.exists(marker):
        return None
    try:
        value = json.loads(storage.read_text(marker))
    except ValueError:
        value = None
    if not isinstance(value, dict) or not isinstance(value.get("step"), str):
        return f"an unknown step (unreadable {OWNER_MARKER} marker)"
    return str(value["step"])


def _first_foreign_file(directory: str) -> str | None:
    """The first file below ``directory`` (relative name) that is not temporary, or None."""
    if storage.is_gcs(directory):
        bucket, prefix = storage.split_gcs(directory)
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        for blob in storage.gcs_client().list_blobs(bucket, prefix=prefix):
            relative = blob.name[len(prefix) :]
            if relative and not any(storage.is_temp(part) for part in relative.split("/")):
                return relative
        return None
    if not os.path.isdir(directory):
        return None
    for root, subdirs, names in os.walk(directory):
        subdirs[:] = sorted(d for d in subdirs if not storage.is_temp(d))
        for name in sorted(names):
            if not storage.is_temp(name):
                return os.path.relpath(os.path.join(root, name), directory)
    return None


@dataclasses.dataclass(frozen=True)
class Holder:
    """Who holds a lock: written into the lock file or object."""

    step: str
    host: str
    pid: int
    started: float  # when the process started, in clock ticks since boot (Linux), or 0
    acquired: float  # unix time
    refreshed: float  # unix time of the last heartbeat (GCS)
    token: str

    def describe(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        since = datetime.datetime.fromtimestamp(self.acquired, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        seen = f", last seen {now - self.refreshed:.0f} s ago" if self.refreshed > self.acquired else ""
        return f"{self.step} on host {self.host}, pid {self.pid}, since {since}{seen}"

    def encode(self) -> bytes:
        return (json.dumps(dataclasses.asdict(self), sort_keys=True) + "\n").encode("utf-8")

    @staticmethod
    def decode(data: bytes) -> Holder | None:
        try:
            value = json.loads(data.decode("utf-8"))
            return Holder(**value)
        except (ValueError, TypeError, UnicodeDecodeError):
            return None


def process_start(pid: int) -> float:
    """A process's start time in clock ticks since boot (Linux), 0 where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    return float(stat[stat.rindex(")") + 2 :].split()[19])


def process_alive(pid: int, started: float = 0.0) -> bool:
    """True when process ``pid`` of this machine runs (and started at ``started``, when known)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc: the signal check is all there is
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    return not started or float(fields[19]) == started


def holder_is_stale(holder: Holder | None, now: float, age_s: float) -> bool:
    """A lock's holder is gone: its process on this host has ended, or no heartbeat came for
    :data:`STALE_AFTER_S`. ``age_s``: how long ago the lock was last written (for a lock
    whose content cannot be read)."""
    if holder is None:
        return age_s > STALE_AFTER_S
    if holder.host == socket.gethostname() and not process_alive(holder.pid, holder.started):
        return True
    return now - holder.refreshed > STALE_AFTER_S


class Lock:
    """An exclusive lock on ``uri``: a local lock file (``fcntl.flock``) or a GCS object.

    Locally the kernel releases the lock when the holder dies, whatever killed it. On GCS the
    object is created with ``if_generation_match=0`` (the server settles a race), names its
    holder and is refreshed every :data:`HEARTBEAT_S`; a lock whose holder is dead (same host,
    process gone) or silent for :data:`STALE_AFTER_S` is taken over. A lock held by a live
    writer fails at once with :class:`LockHeld` naming it; one whose holder on another host
    went quiet is waited for until it is stale (a preempted pod's retry).
    """

    def __init__(self, uri: str, step: str) -> None:
        self.uri = uri
        self.step = step
        now = time.time()
        self.holder = Holder(
            step, socket.gethostname(), os.getpid(), process_start(os.getpid()), now, now, uuid.uuid4().hex
        )
        self._fd: int | None = None
        self._generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.lost = False

    # local ------------------------------------------------------------------------------

    def _acquire_local(self) -> None:
        import fcntl

        os.makedirs(os.path.dirname(self.uri) or ".", exist_ok=True)
        while True:
            fd = os.open(self.uri, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = Holder.decode(os.pread(fd, 4096, 0))
                os.close(fd)
                raise LockHeld(self._held_message(holder)) from None
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.uri))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder before us removed the file: lock the new one
        os.ftruncate(fd, 0)
        os.pwrite(fd, self.holder.encode(), 0)
        self._fd = fd

    def _release_local(self) -> None:
        assert self._fd is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.uri)  # while still locked: a waiter then locks a fresh file
        os.close(self._fd)
        self._fd = None

    # GCS --------------------------------------------------------------------------------

    def _acquire_gcs(self) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        bucket_name, name = storage.split_gcs(self.uri)
        bucket = storage.gcs_client().bucket(bucket_name)
        for _attempt in range(20):
            existing = bucket.get_blob(name)
            if existing is not None:
                try:
                    holder = Holder.decode(
                        existing.download_as_bytes(if_generation_match=existing.generation)
                    )
                except (NotFound, PreconditionFailed):
                    continue  # released or refreshed meanwhile: look again
                now = time.time()
                written = existing.updated.timestamp() if existing.updated else now
                if not holder_is_stale(holder, now, now - written):
                    self._wait_or_fail(holder, now)
                    continue
                log.warning(
                    "%s: taking over the stale lock of %s",
                    self.uri,
                    holder.describe(now) if holder else "an unknown holder",
                )
                with contextlib.suppress(NotFound, PreconditionFailed):
                    existing.delete(if_generation_match=existing.generation)
            blob = bucket.blob(name)
            try:
                blob.upload_from_string(
                    self.holder.encode(), content_type="application/json", if_generation_match=0
                )
            except PreconditionFailed:
                continue  # another writer created it first
            # read back: the server enforces the precondition, the tests' emulator does not
            mine = bucket.get_blob(name)
            if mine is not None:
                try:
                    content = Holder.decode(mine.download_as_bytes())
                except NotFound:
                    content = None
                if content is not None and content.token == self.holder.token:
                    self._generation = mine.generation
                    self._thread = threading.Thread(
                        target=self._heartbeat, name="lock-heartbeat", daemon=True
                    )
                    self._thread.start()
                    return
        raise LockHeld(f"{self.uri}: could not take the lock (it changed hands 20 times); try again")

    def _wait_or_fail(self, holder: Holder | None, now: float) -> None:
        """Fail at once for a live holder; wait out one on another host that went quiet."""
        if (
            holder is None
            or holder.host == socket.gethostname()
            or now - holder.refreshed < 1.5 * HEARTBEAT_S
        ):
            raise LockHeld(self._held_message(holder))
        wait = STALE_AFTER_S - (now - holder.refreshed) + 1
        log.warning(
            "%s: held by %s, which stopped refreshing it; waiting %.0f s for it to go stale",
            self.uri,
            holder.describe(now),
            wait,
        )
        time.sleep(max(0.0, wait))

    def _heartbeat(self) -> None:
        from google.api_core.exceptions import GoogleAPIError

        bucket_name, name = storage.split_gcs(self.uri)
        while not self._stop.wait(HEARTBEAT_S):
            self.holder = dataclasses.replace(self.holder, refreshed=time.time())
            blob = storage.gcs_client().bucket(bucket_name).blob(name)
            try:
                blob.upload_from_string(
                    self.holder.encode(),
                    content_type="application/json",
                    if_generation_match=self._generation,
                )
                self._generation = blob.generation
            except GoogleAPIError as err:
                if type(err).__name__ in ("PreconditionFailed", "NotFound"):
                    self.lost = True
                    log.error("%s: the lock was taken by another writer", self.uri)
                    return
                log.warning("%s: could not refresh the lock: %s", self.uri, err)

    def _release_gcs(self) -> None:
        from google.api_core.exceptions import NotFound, PreconditionFailed

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        bucket_name, name = storage.split_gcs(self.uri)
        blob = storage.gcs_client().bucket(bucket_name).get_blob(name)
        if blob is None:
            return
        with contextlib.suppress(NotFound, PreconditionFailed):
            content = Holder.decode(blob.download_as_bytes(if_generation_match=blob.generation))
            if content is not None and content.token == self.holder.token:
                blob.delete(if_generation_match=blob.generation)

    # both -------------------------------------------------------------------------------

    def _held_message(self, holder: Holder | None) -> str:
        who = holder.describe() if holder else "a process that has not written its name yet"
        return (
            f"{storage.parent(self.uri)} is being written by another run "
            f"({who}; lock {storage.basename(self.uri)}); wait for it to end, or write elsewhere"
        )

    def acquire(self) -> Lock:
        if storage.is_gcs(self.uri):
            self._acquire_gcs()
        else:
            self._acquire_local()
        return self

    def release(self) -> None:
        if storage.is_gcs(self.uri):
            self._release_gcs()
        elif self._fd is not None:
            self._release_local()

    def probe(self) -> None:
        """Raise :class:`LockHeld` if a live process holds the lock now; take nothing.

        Many processes may probe at once (the tasks of a fan-out): locally this is a shared
        ``flock`` that an exclusive holder refuses, on GCS a look at the lock object.
        """
        if storage.is_gcs(self.uri):
            bucket_name, name = storage.split_gcs(self.uri)
            blob = storage.gcs_client().bucket(bucket_name).get_blob(name)
            if blob is None:
                return
            from google.api_core.exceptions import NotFound

            try:
                holder = Holder.decode(blob.download_as_bytes())
            except NotFound:
                return
            now = time.time()
            written = blob.updated.timestamp() if blob.updated else now
            if not holder_is_stale(holder, now, now - written):
                raise LockHeld(self._held_message(holder))
            return
        import fcntl

        try:
            fd = os.open(self.uri, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockHeld(self._held_message(Holder.decode(os.pread(fd, 4096, 0)))) from None
        finally:
            os.close(fd)

    def check(self) -> None:
        """Raise when the lock was lost (a GCS lock taken over while this process stalled)."""
        if self.lost:
            raise LockHeld(f"{self.uri}: the lock was taken over by another writer; stopping")


@contextlib.contextmanager
def locked(uri: str, step: str) -> Iterator[Lock]:
    """Hold the lock ``uri`` for the body (see :class:`Lock`).

    While it is held, the local files of GCS writes go to the lock's :func:`staging_dir`;
    whatever a killed holder left there is removed first, and the directory on release. In
    the main thread SIGTERM (a pod being stopped) becomes ``SystemExit``, so that a
    terminated holder releases its lock rather than leaving it to go stale.

    Raises:
        LockHeld: a live process holds it; the message names it.
    """
    with _exit_on_sigterm():
        lock = Lock(uri, step).acquire()
        staging = staging_dir(uri)
        shutil.rmtree(staging, ignore_errors=True)  # a killed holder's leftovers: the lock is ours now
        try:
            with storage.staging_in(staging):
                yield lock
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            lock.release()


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises ``SystemExit(143)`` in the body (main thread, default handler only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def stop(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

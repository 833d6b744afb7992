"""Progress lines (files, MB, MB/s, ETA) and a rate cap for a download's copies."""

from __future__ import annotations

import logging
import threading
import time

from components.progress import format_seconds

log = logging.getLogger("asrflow.download")

MB = 1_000_000


class Transfer:
    """Counts files and bytes moved, logs progress lines (files, MB, MB/s, ETA), and keeps the
    rate under ``max_mbps`` (all workers together) when one is given.

    Ours rather than :class:`components.progress.Progress`: it counts bytes and files at once
    and sleeps to hold a rate, from several threads.
    """

    def __init__(
        self, total_files: int, total_bytes: int, max_mbps: float | None = None, every_s: float = 10.0
    ) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.max_rate = max_mbps * MB if max_mbps else None
        self.every_s = every_s
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            due = self.started + self.bytes / self.max_rate if self.max_rate else now
            line = None
            if now - self._last >= self.every_s:
                self._last = now
                line = self.line()
        if line:
            log.info(line)
        if due > now:
            time.sleep(due - now)

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        percent = f" ({self.bytes / self.total_bytes:.0%})" if self.total_bytes else ""
        parts = [
            f"download: {self.files}/{self.total_files} files",
            f"{self.bytes / MB:.1f}/{self.total_bytes / MB:.1f} MB{percent}",
            f"{rate / MB:.1f} MB/s",
        ]
        if final:
            parts.append(f"done in {format_seconds(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {format_seconds((self.total_bytes - self.bytes) / rate)}")
        return ", ".join(parts)

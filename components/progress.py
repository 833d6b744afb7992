"""Progress lines for long work, readable in ``kubectl logs`` (one line per update)."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("asrflow")


def format_seconds(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class Progress:
    """Logs ``done/total``, rate and ETA at most every ``every_s`` seconds, and once at the end.

    Args:
        what: the step and the thing counted, e.g. "write-shards utterances".
        total: the expected count, or None when unknown (no percentage or ETA then).
        every_s: the least time between two lines.
    """

    def __init__(self, what: str, total: int | None = None, every_s: float = 10.0) -> None:
        self.what = what
        self.total = total
        self.every_s = every_s
        self.done = 0
        self.extra: dict[str, object] = {}
        self.started = time.monotonic()
        self._last = self.started

    def update(self, n: int = 1, **extra: object) -> None:
        self.done += n
        self.extra.update(extra)
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info(self.line())

    def finish(self) -> None:
        log.info(self.line(final=True))

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.what}: {self.done}"]
        if self.total:
            parts[0] += f"/{self.total} ({self.done / self.total:.0%})"
        parts.append(f"{rate:.1f}/s")
        if final:
            parts.append(f"done in {format_seconds(elapsed)}")
        elif self.total and rate > 0:
            parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts.extend(f"{key}={value}" for key, value in self.extra.items())
        return " ".join(parts)


def setup_logging(level: int = logging.INFO, debug: bool = False) -> None:
    """Line-based logs with a timestamp, the same on a TTY and in a pod.

    Args:
        level: the level of the root logger (libraries' logs).
        debug: also asrflow's own debug lines (``asrflow --debug``).
    """
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%Y-%m-%dT%H:%M:%S",
    )
    if debug:
        log.setLevel(logging.DEBUG)

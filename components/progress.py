"""Progress lines for long work, readable in ``kubectl logs`` (one line per update).

tqdm writes the figures: counts, percentage, rate and times (:meth:`tqdm.tqdm.format_meter`,
:meth:`tqdm.tqdm.format_interval`). Its own display is not used: it redraws one line with
carriage returns, which a pod's log keeps as a single ever-growing line. :class:`Progress`
logs a whole line instead, at most every ``every_s`` seconds and once at the end, through
``logging`` (so that it carries the timestamp every other line has).
"""

from __future__ import annotations

import logging
import time

from tqdm import tqdm

log = logging.getLogger("asrflow")

# tqdm's bar_format fields; `kubectl asrflow runs` reads "N/M (P%)" and "ETA T" back
# (pipelines/kubectl/summary.py)
RUNNING = "{desc}: {n}/{total} ({percentage:.0f}%) {rate_noinv_fmt} ETA {remaining}"
FINISHED = "{desc}: {n}/{total} ({percentage:.0f}%) {rate_noinv_fmt} done in {elapsed}"
RUNNING_NO_TOTAL = "{desc}: {n} {rate_noinv_fmt}"
FINISHED_NO_TOTAL = "{desc}: {n} {rate_noinv_fmt} done in {elapsed}"


def format_seconds(seconds: float) -> str:
    """A duration as tqdm writes it: ``00:15``, ``02:05``, ``1:02:03``."""
    return tqdm.format_interval(max(0.0, seconds))


class Progress:
    """Logs ``done/total``, rate and ETA at most every ``every_s`` seconds, and once at the end.

    A line reads ``what: 120/300 (40%) 12.0/s ETA 00:15 key=value`` while running and
    ``what: 300/300 (100%) 12.5/s done in 00:24 key=value`` at the end; without a total (or
    past it) only the count and the rate.

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
        """Counts ``n`` more and sets the ``key=value`` figures shown after the rate."""
        self.done += n
        self.extra.update(extra)
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            log.info(self.line())

    def finish(self) -> None:
        log.info(self.line(final=True))

    def line(self, final: bool = False) -> str:
        """The progress line now; ``final``: with the time taken instead of the ETA."""
        counted = bool(self.total) and self.done <= self.total
        if counted:
            bar_format = FINISHED if final else RUNNING
        else:
            bar_format = FINISHED_NO_TOTAL if final else RUNNING_NO_TOTAL
        text = tqdm.format_meter(
            self.done,
            self.total if counted else None,
            time.monotonic() - self.started,
            prefix=self.what,
            unit="",
            unit_scale=True,  # the rate as 12.0, 1.23k; {n} and {total} stay whole numbers
            bar_format=bar_format,
        )
        return " ".join([text, *(f"{key}={value}" for key, value in self.extra.items())])


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

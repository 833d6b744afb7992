"""Writing every group of a plan, in this process or a pool of worker processes.

Pool workers die with the run: a forked worker by ``PR_SET_PDEATHSIG``, a fork server's
worker by watching the run's process; stopping the run (SIGTERM) ends them at once, and
their group locks go with them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time

from components import outputs
from components.progress import format_seconds, setup_logging
from components.shard.card import GroupCard, ShardsCard
from components.shard.group import write_group
from components.shard.plan import Plan

log = logging.getLogger("asrflow.write_shards")

STEP = ShardsCard.STEP
PR_SET_PDEATHSIG = 1


def write_all_groups(plan: Plan, out_dir: str, workers: int) -> list[GroupCard]:
    """Write (or skip, when finished) every group of ``plan``, ``workers`` at a time."""
    started = time.monotonic()
    count = len(plan.groups)
    workers = max(1, min(workers, count))
    log.info(
        "%s: %d files in %d groups -> %d shards, %d worker(s)",
        STEP,
        len(plan.source.files),
        count,
        plan.num_shards,
        workers,
    )
    if workers == 1:
        results = [write_group(plan, index, out_dir) for index in range(count)]
    else:
        results = _write_in_pool(plan, out_dir, workers)
    seconds = sum(card.seconds for card in results)
    elapsed = time.monotonic() - started
    log.info(
        "%s: %d utterances, %.2f h of audio in %s (%.0fx real time)",
        STEP,
        sum(card.utterances for card in results),
        seconds / 3600,
        format_seconds(elapsed),
        seconds / elapsed if elapsed else 0.0,
    )
    return results


def _write_in_pool(plan: Plan, out_dir: str, workers: int) -> list[GroupCard]:
    count = len(plan.groups)
    context = _pool_context()
    log.debug("%s: workers start by %s", STEP, context.get_start_method())
    pool = concurrent.futures.ProcessPoolExecutor(
        workers,
        context,
        initializer=_init_worker,
        initargs=(os.getpid(), outputs.process_start(os.getpid())),
    )
    with pool:
        futures = [pool.submit(write_group, plan, index, out_dir) for index in range(count)]
        results = []
        try:
            for done, future in enumerate(futures, start=1):
                results.append(future.result())
                log.info("%s: %d/%d groups written", STEP, done, count)
        except (KeyboardInterrupt, SystemExit):
            # stopped (SIGTERM): the workers release their locks and end now
            for process in list(getattr(pool, "_processes", {}).values()):
                process.terminate()
            pool.shutdown(wait=True, cancel_futures=True)
            raise
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # groups running finish; no new ones
            raise
    return results


def _pool_context() -> multiprocessing.context.BaseContext:
    """How pool workers start: forked, when this process has a single thread (the CLI on local
    disks: a fork takes milliseconds, where a fresh interpreter takes a third of a second that
    a small run cannot win back); else from a fork server that has imported this module (and the
    group writer) once, so that no thread state (Arrow's pools, a lock's heartbeat) is inherited and no
    worker pays the imports again."""
    if _single_threaded():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        [__name__, "components.sources", "components.audio", "pyarrow.parquet", "soundfile"]
    )
    return context


def _single_threaded() -> bool:
    """True when this process has one thread, native ones (Arrow's) counted (Linux only)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


def _init_worker(run_pid: int, run_started: float) -> None:
    """A pool worker's set-up: logging, and dying with the run.

    A forked worker's parent is the run: ``PR_SET_PDEATHSIG`` kills it when the run ends,
    SIGKILL included. A fork server's worker has the fork server as its parent, and the fork
    server lives as long as any worker does (each holds its "alive" pipe), so there each
    worker also watches the run's process itself (a pidfd where Linux has one, else polling)
    and exits the moment it ends; the fork server and the resource tracker then end too.
    """
    setup_logging()
    _set_parent_death_signal()
    threading.Thread(target=_watch_run, args=(run_pid, run_started), name="watch-run", daemon=True).start()


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_run(run_pid: int, run_started: float) -> None:
    """End this process when the run's process ends (a daemon thread of each worker)."""
    import select

    try:
        pidfd: int | None = os.pidfd_open(run_pid)
    except (AttributeError, OSError):
        pidfd = None
    if outputs.process_alive(run_pid, run_started):  # after the pidfd: no pid reuse in between
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has ended
        else:
            while outputs.process_alive(run_pid, run_started):
                time.sleep(0.5)
    os._exit(1)

"""``make chaos``: kill each long step at random points, rerun it, and check what is left.

For each target (download, write-shards on local disk and on gs://, train) a reference run
goes to the end first. Then, at each of ``--points`` random moments within the reference's
duration, a fresh run is started in its own session and its main process is SIGKILLed (as
the kubelet does to a pod past its grace period). Processes of that session still alive two
seconds later are counted as left behind (and then killed). The same command is run again
and must finish; its output is compared with the reference's:

- download, write-shards: every output file byte-identical;
- train: a resumed run draws a new data order on purpose (a preempted attempt must not
  replay the same batches), so the weights differ; identical means the same card facts
  (steps, config, model class and size, dataset and its hours) and the same checkpoints.
  Steps recomputed: steps the rerun trained that the killed run had already logged.

Prints one table. Exit status 1 when any point did not finish, differed, or left a process.

    .venv/bin/python -m tests.chaos [--points N] [--seed S] [--targets download,write-shards,...]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from components import storage
from components.shard.group import DELAY_ENV
from tests.fixtures.corpus import BUNDLED_CORPUS as BUNDLED
from tests.fixtures.gcs import running_emulator

ASRFLOW = str(Path(sys.executable).with_name("asrflow"))
GRACE_S = 2.0
TRAIN_STEPS = 30
TRAIN_EVERY = 5
# card keys that name where the output is (each point writes elsewhere)
LOCATION_KEYS = ("out", "out_dir", "manifest", "metadata", "rejects")
LOCATION_KEYS += ("tarred_audio_filepaths", "sharded_manifests")
TRAIN_CARD_FACTS = ("steps", "max_steps", "config", "model_class", "parameters", "dataset_hours", "precision")


@dataclasses.dataclass
class Point:
    """One kill and rerun."""

    delay_s: float
    finished: bool
    identical: bool
    left_behind: int
    recomputed: int | None = None


@dataclasses.dataclass
class Target:
    """A step to kill: its command for an output location, and how outputs compare."""

    name: str
    command: Callable[[str], list[str]]
    env: dict[str, str]
    snapshot: Callable[[str], object]
    fresh_output: Callable[[str], str]


def live_processes() -> dict[int, list[str]]:
    """Every live process (zombies and dead ones left out): pid -> the fields of
    /proc/PID/stat after the command name (state, ppid, pgrp, session, …)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] not in ("Z", "X"):
            found[int(entry.name)] = fields
    return found


def session_processes(session: int) -> list[int]:
    """Live processes whose session id is ``session``."""
    return [pid for pid, fields in live_processes().items() if int(fields[3]) == session]


def kill_session(session: int) -> None:
    for pid in session_processes(session):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def run_to_end(command: list[str], env: dict[str, str], log: Path) -> tuple[int, float]:
    started = time.monotonic()
    with open(log, "w") as stream:
        code = subprocess.run(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, timeout=1800
        ).returncode
    return code, time.monotonic() - started


def kill_after(command: list[str], env: dict[str, str], delay_s: float, log: Path) -> int:
    """Start ``command`` in a new session, SIGKILL its main process after ``delay_s``; return
    how many processes of its session were still alive ``GRACE_S`` later."""
    with open(log, "w") as stream:
        process = subprocess.Popen(
            command, env=env, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        process.wait(timeout=delay_s)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGKILL)
        process.wait()
    time.sleep(GRACE_S)
    left = session_processes(process.pid)
    kill_session(process.pid)
    return len(left)


def local_files(root: str) -> dict[str, bytes]:
    base = Path(root)
    return {str(p.relative_to(base)): p.read_bytes() for p in sorted(base.rglob("*")) if p.is_file()}


def gcs_files(root: str) -> dict[str, bytes]:
    """Every object below ``root``, temporary ones included (storage.list_files hides them)."""
    bucket, prefix = storage.split_gcs(root)
    blobs = storage.gcs_client().list_blobs(bucket, prefix=prefix.rstrip("/") + "/")
    return {blob.name[len(prefix) + 1 :]: blob.download_as_bytes() for blob in blobs}


def comparable(files: dict[str, bytes]) -> dict[str, bytes]:
    """Outputs as compared: the card's own location left out (each run writes elsewhere)."""
    out = dict(files)
    if "card.json" in out:
        card = json.loads(out["card.json"])
        for key in LOCATION_KEYS:
            card.pop(key, None)
        out["card.json"] = json.dumps(card, sort_keys=True).encode()
    return out


def train_snapshot(run_dir: str) -> object:
    card = json.loads((Path(run_dir) / "card.json").read_text())
    checkpoints = sorted(p.name for p in (Path(run_dir) / "checkpoints").iterdir())
    return {key: card.get(key) for key in TRAIN_CARD_FACTS}, checkpoints, storage.is_complete(run_dir)


def steps_recomputed(killed_log: Path, rerun_log: Path) -> int:
    """Steps the rerun trained again: those it logged that the killed run had logged already."""

    def steps(log: Path) -> set[int]:
        return {int(s) for s in re.findall(rf"step (\d+)/{TRAIN_STEPS} ", log.read_text())}

    reached = max(steps(killed_log), default=0)
    return len([step for step in steps(rerun_log) if step <= reached])


def make_targets(work: Path, bucket: str) -> list[Target]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    slow_shards = {**env, DELAY_ENV: "0.03"}  # a few seconds a group: room to kill in between

    def download(out: str) -> list[str]:
        options = "--config clean --split train --workers 2 --max-mbps 4".split()
        return [ASRFLOW, "download", str(BUNDLED), "--out", out, *options]

    def write_shards(out: str) -> list[str]:
        options = "--num-shards 4 --groups 2 --workers 2".split()
        return [ASRFLOW, "write-shards", f"{BUNDLED}/clean", "--out", out, *options]

    def train(out: str) -> list[str]:
        data = [str(work / "train-shards"), "--val", str(work / "val" / "manifest.json")]
        options = ["--config", "tiny", "--checkpoint-every", str(TRAIN_EVERY)]
        options.append(f"trainer.max_steps={TRAIN_STEPS}")
        return [ASRFLOW, "train", *data, "--run-dir", out, *options]

    def local(name: str) -> Callable[[str], str]:
        return lambda point: str(work / name / f"out-{point}")

    def gcs(name: str) -> Callable[[str], str]:
        return lambda point: f"{bucket}/{name}/out-{point}"

    def local_outputs(out: str) -> object:
        return comparable(local_files(out))

    def gcs_outputs(out: str) -> object:
        return comparable(gcs_files(out))

    return [
        Target("download", download, env, local_outputs, local("download")),
        Target("write-shards", write_shards, slow_shards, local_outputs, local("write-shards")),
        Target("write-shards gs://", write_shards, slow_shards, gcs_outputs, gcs("write-shards")),
        Target("train", train, env, train_snapshot, local("train")),
    ]


def prepare_training_data(work: Path) -> None:
    from components.export import export_manifest
    from components.shard.core import write_shards

    write_shards(f"{BUNDLED}/clean", str(work / "train-shards"), 4, 0)
    export_manifest(f"{BUNDLED}/validation", str(work / "val"))


def run_target(target: Target, points: int, rng: random.Random, logs: Path) -> list[Point]:
    reference = target.fresh_output("reference")
    code, duration = run_to_end(target.command(reference), target.env, logs / "reference.log")
    if code != 0:
        raise RuntimeError(f"{target.name}: the reference run failed; see {logs / 'reference.log'}")
    expected = target.snapshot(reference)
    results = []
    for i in range(points):
        out = target.fresh_output(str(i))
        delay = rng.uniform(0.05, duration)
        killed_log, rerun_log = logs / f"killed-{i}.log", logs / f"rerun-{i}.log"
        left = kill_after(target.command(out), target.env, delay, killed_log)
        code, _ = run_to_end(target.command(out), target.env, rerun_log)
        identical = code == 0 and target.snapshot(out) == expected
        recomputed = steps_recomputed(killed_log, rerun_log) if target.name == "train" else None
        results.append(Point(delay, code == 0, identical, left, recomputed))
        print(
            f"  {target.name}: kill at {delay:5.1f}s of {duration:.1f}s -> "
            f"{'finished' if code == 0 else f'FAILED ({rerun_log})'}, "
            f"{'identical' if identical else 'DIFFERENT'}, {left} left behind"
            + (f", {recomputed} steps recomputed" if recomputed is not None else ""),
            flush=True,
        )
    return results


def table(rows: dict[str, list[Point]]) -> str:
    header = ["target", "points", "finished", "identical", "left behind", "steps recomputed (max)"]
    lines = [header]
    for name, points in rows.items():
        recomputed = [p.recomputed for p in points if p.recomputed is not None]
        lines.append(
            [
                name,
                str(len(points)),
                f"{100 * sum(p.finished for p in points) / len(points):.0f}%",
                f"{100 * sum(p.identical for p in points) / len(points):.0f}%",
                str(sum(p.left_behind for p in points)),
                str(max(recomputed)) if recomputed else "-",
            ]
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in lines)


@contextmanager
def workspace(keep: Path | None) -> Iterator[Path]:
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    path = Path(tempfile.mkdtemp(prefix="asrflow-chaos-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="make chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10, help="kills per target (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the kill moments (default: random)")
    parser.add_argument("--targets", default="download,write-shards,write-shards gs://,train")
    parser.add_argument("--workdir", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**31)
    rng = random.Random(seed)
    print(f"chaos: {args.points} kills per target, seed {seed}", flush=True)
    wanted = [name.strip() for name in args.targets.split(",")]
    rows: dict[str, list[Point]] = {}
    with workspace(args.workdir) as work, running_emulator(work / "gcs-emulator.log"):
        bucket = f"gs://asrflow-chaos-{seed}"
        storage.gcs_client().create_bucket(bucket.removeprefix("gs://"))
        if "train" in wanted:
            prepare_training_data(work)
        for target in make_targets(work, bucket):
            if target.name not in wanted:
                continue
            logs = work / "logs" / target.name.replace(" ", "_").replace(":", "").replace("/", "")
            logs.mkdir(parents=True, exist_ok=True)
            rows[target.name] = run_target(target, args.points, rng, logs)
    print()
    print(table(rows))
    good = [p.finished and p.identical and p.left_behind == 0 for points in rows.values() for p in points]
    print(f"chaos: {sum(good)} passed, {len(good) - sum(good)} failed")
    sys.exit(0 if all(good) else 1)


if __name__ == "__main__":
    main()

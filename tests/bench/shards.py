"""Benchmark of write-shards against a raw copy of the same audio bytes into a tar.

``python -m tests.bench shards [--workdir DIR]`` generates (once, cached under the workdir) a
People's-Speech-shaped corpus of at least an hour, then measures, each job in its own child
process, timed from inside (imports excluded), with its peak RSS (VmHWM; a one-worker run
does all the work in that process):

* the baseline: read the parquet audio column and write every audio blob into one tar;
* write-shards with one worker: audio hours per CPU core-minute and MB/s, and the ratio of
  its MB/s to the baseline's (the validation, hashing and manifest overhead; aim >= 0.8);
* write-shards with two workers over two groups (wall-clock throughput);
* peak RSS for the 1x input against a 4x input (the same audio under other ids): it must
  stay flat, since write-shards streams;
* one big NeMo manifest (a 4.5 h corpus exported as FLAC files plus ``manifest.json``, what
  most NeMo users have) with 1 and with 2 workers side by side, the groups left at their
  default (the same bytes either way): the wall-clock speed-up of the second worker (aim
  >= 1.6x). Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

HOURS = 1.0
SEED = 1
TRAIN_FILES = 8
SCALE = 4
NUM_SHARDS = 8
REPEATS = 3
MANIFEST_HOURS = 4.5
MANIFEST_REPEATS = 7
# the corpus generator's parquet layout, so that the 4x input reads like the 1x one
WRITE_OPTIONS = {
    "row_group_size": 100,
    "compression": "snappy",
    "use_dictionary": ["id", "text"],
    "write_statistics": True,
    "version": "2.6",
}


def ensure_corpus(workdir: Path) -> Path:
    """The train split of a >= 1 h corpus under ``workdir/corpus`` (generated once)."""
    from tests.corpus.generate import generate_corpus

    root = workdir / "corpus"
    train = root / "clean"
    stamp = root / "bench.json"
    wanted = {"hours": HOURS, "seed": SEED, "train_files": TRAIN_FILES}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return train
    started = time.perf_counter()
    print(f"generating a {HOURS:g} h corpus in {root} (once; reused with --workdir)", flush=True)
    generate_corpus(root, 0, 0, 0, SEED, train_files=TRAIN_FILES, hours=HOURS, splits=("train",))
    stamp.write_text(json.dumps(wanted))
    print(f"  generated in {time.perf_counter() - started:.0f} s", flush=True)
    return train


def ensure_scaled(train: Path, workdir: Path, factor: int) -> Path:
    """``factor`` copies of the train files, each copy's ids suffixed so that none repeats."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    out = workdir / f"corpus_x{factor}"
    files = sorted(train.glob("*.parquet"))
    count = len(files) * factor
    names = [f"train-{i:05d}-of-{count:05d}.parquet" for i in range(count)]
    stamp = out / "bench.json"
    wanted = {"factor": factor, "files": [p.name for p in files], "layout": WRITE_OPTIONS}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted:
        return out
    out.mkdir(parents=True, exist_ok=True)
    for copy in range(factor):
        for index, path in enumerate(files):
            table = pq.read_table(path)
            ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(f"-copy{copy}"), "")
            table = table.set_column(0, "id", ids.cast(pa.string()))
            pq.write_table(table, out / names[copy * len(files) + index], **WRITE_OPTIONS)
    stamp.write_text(json.dumps(wanted))
    return out


def audio_stats(directory: Path) -> dict[str, float]:
    import pyarrow.parquet as pq

    seconds = 0.0
    audio_bytes = 0
    rows = 0
    for path in sorted(directory.glob("*.parquet")):
        table = pq.read_table(path, columns=["audio", "duration_ms"])
        seconds += sum(table.column("duration_ms").to_pylist()) / 1000
        audio_bytes += sum(len(b) for b in table.column("audio").combine_chunks().field("bytes").to_pylist())
        rows += table.num_rows
    return {"hours": seconds / 3600, "mb": audio_bytes / 1e6, "rows": rows}


# --- the jobs, each run in a child process --------------------------------------------------


def job_raw_copy(input_dir: str, out_dir: str) -> None:
    """The baseline: every audio blob of the input into one tar, nothing checked; flushed to
    disk at the end, as write-shards' atomic writes are (a dataset that is not on disk is
    not written)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(out_dir) / "raw.tar", "wb") as stream, tarfile.open(fileobj=stream, mode="w") as tar:
        index = 0
        for path in sorted(Path(input_dir).glob("*.parquet")):
            parquet = pq.ParquetFile(path)
            for batch in parquet.iter_batches(batch_size=64, columns=["audio"]):
                for blob in pc.struct_field(batch.column("audio"), "bytes").to_pylist():
                    info = tarfile.TarInfo(f"{index:08d}.flac")
                    info.size = len(blob)
                    tar.addfile(info, _Reader(blob))
                    index += 1
        tar.close()
        stream.flush()
        os.fsync(stream.fileno())


class _Reader:
    """A read-only view of bytes for tarfile (what io.BytesIO would do, without a copy)."""

    def __init__(self, data: bytes) -> None:
        self.view = memoryview(data)
        self.pos = 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.view) if size < 0 else self.pos + size
        chunk = self.view[self.pos : end]
        self.pos += len(chunk)
        return chunk


def ensure_manifest_corpus(workdir: Path) -> Path:
    """A MANIFEST_HOURS corpus as one NeMo manifest with FLAC files beside it (made once)."""
    from components.export import export_manifest
    from tests.corpus.generate import generate_corpus

    root = workdir / "manifest_corpus"
    manifest = root / "nemo" / "manifest.json"
    stamp = root / "bench.json"
    wanted = {"hours": MANIFEST_HOURS, "seed": SEED, "train_files": TRAIN_FILES}
    if stamp.exists() and json.loads(stamp.read_text()) == wanted and manifest.exists():
        return manifest
    started = time.perf_counter()
    print(f"generating a {MANIFEST_HOURS:g} h corpus and its manifest in {root} (once)", flush=True)
    generate_corpus(
        root / "parquet", 0, 0, 0, SEED, train_files=TRAIN_FILES, hours=MANIFEST_HOURS, splits=("train",)
    )
    export_manifest(str(root / "parquet" / "clean"), str(root / "nemo"))
    stamp.write_text(json.dumps(wanted))
    print(f"  generated in {time.perf_counter() - started:.0f} s", flush=True)
    return manifest


def manifest_stats(manifest: Path) -> dict[str, float]:
    seconds = 0.0
    audio_bytes = 0
    rows = 0
    with open(manifest, encoding="utf-8") as stream:
        for line in stream:
            entry = json.loads(line)
            seconds += entry["duration"]
            audio_bytes += (manifest.parent / entry["audio_filepath"]).stat().st_size
            rows += 1
    return {"hours": seconds / 3600, "mb": audio_bytes / 1e6, "rows": rows}


def job_write_shards(input_dir: str, out_dir: str, workers: str, groups: str) -> None:
    from components.shard.core import write_shards

    write_shards(input_dir, out_dir, NUM_SHARDS, SEED, workers=int(workers), groups=int(groups) or None)


JOBS = {"raw": job_raw_copy, "shards": job_write_shards}


def _child_main(argv: list[str]) -> None:
    import resource

    name, *args = argv
    # imports are not what is measured, except for a manifest input, which is measured as the
    # CLI runs it: its main process imports neither pyarrow nor soundfile (numpy), whose
    # threads would make the pool start workers from a fork server instead of forking them
    if not args[0].endswith(".json"):
        import pyarrow.parquet  # noqa: F401
        import soundfile  # noqa: F401
    import yaml  # noqa: F401

    from components.shard import core  # noqa: F401

    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    JOBS[name](*args)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    cpu += children.ru_utime + children.ru_stime
    print(json.dumps({"wall_s": wall, "cpu_s": cpu}))


def run_job(name: str, *args: str) -> dict[str, Any]:
    """Run a job in a child; its own timing plus the peak RSS of it and its workers."""
    import shutil

    out = Path(args[1])
    if out.exists():
        shutil.rmtree(out)
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.shards", "--job", name, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"bench job {name} failed:\n{stderr.decode()[-3000:]}")
    figures = json.loads(stdout.decode().strip().splitlines()[-1])
    figures["max_rss_mb"] = _max_rss_mb(stderr)
    shutil.rmtree(out)
    return figures


def _max_rss_mb(stderr: bytes) -> float:
    for line in reversed(stderr.decode().splitlines()):
        if line.startswith("MAXRSS_KB "):
            return int(line.split()[1]) / 1024
    raise RuntimeError("the job did not report its peak memory")


def best(name: str, *args: str) -> dict[str, Any]:
    """The least wall time, CPU time and peak RSS of a few runs (the machine may be shared)."""
    runs = [run_job(name, *args) for _ in range(REPEATS)]
    return {key: min(figures[key] for figures in runs) for key in runs[0]}


def run(workdir: Path) -> None:
    """Generate (or reuse) the corpus and print the figures."""
    workdir.mkdir(parents=True, exist_ok=True)
    train = ensure_corpus(workdir)
    scaled = ensure_scaled(train, workdir, SCALE)
    one, many = audio_stats(train), audio_stats(scaled)
    print(
        f"corpus: {one['hours']:.2f} h, {one['rows']} utterances, {one['mb']:.1f} MB of FLAC in "
        f"{TRAIN_FILES} files; {SCALE}x input: {many['hours']:.2f} h, {many['mb']:.1f} MB",
        flush=True,
    )
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    out = str(workdir / "out")
    results = {}
    for label, data, stats in (("1x", train, one), (f"{SCALE}x", scaled, many)):
        raw = best("raw", str(data), out)
        single = best("shards", str(data), out, "1", "1")
        results[label] = (stats, raw, single)
        print(f"-- {label} input ({stats['hours']:.2f} h, {stats['mb']:.1f} MB)", flush=True)
        print(_line("raw copy into tar", stats, raw))
        print(_line("write-shards, 1 worker", stats, single))
        print(
            f"   ratio write-shards / raw copy: {raw['wall_s'] / single['wall_s']:.2f} by wall time, "
            f"{raw['cpu_s'] / single['cpu_s']:.2f} by CPU time (aim >= 0.8)",
            flush=True,
        )
    stats, _, _ = results[f"{SCALE}x"]
    pooled = best("shards", str(scaled), out, "2", "2")
    print(
        f"   {'write-shards, 2 workers x 2 groups':<36} {stats['mb'] / pooled['wall_s']:7.1f} MB/s  "
        f"wall {pooled['wall_s']:.2f} s, worker start-up included (their CPU is not counted: "
        "they run under a fork server)",
        flush=True,
    )
    rss_one, rss_many = results["1x"][2]["max_rss_mb"], results[f"{SCALE}x"][2]["max_rss_mb"]
    print(
        f"peak RSS of write-shards (1 worker, 1 group): {rss_one:.0f} MB for 1x, {rss_many:.0f} MB "
        f"for {SCALE}x ({rss_many / rss_one:.2f}x for {SCALE}x the data; flat means ~1.0); "
        f"raw copy: {results['1x'][1]['max_rss_mb']:.0f} MB",
        flush=True,
    )
    run_manifest(workdir)


def run_manifest(workdir: Path) -> None:
    """One big manifest, 1 worker against 2, default groups, side by side."""
    from components.audio import Rules
    from components.shard.plan import make_plan
    from components.sources import open_source

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = ensure_manifest_corpus(workdir)
    stats = manifest_stats(manifest)
    groups = len(make_plan(open_source(str(manifest)), NUM_SHARDS, SEED, Rules()).groups)
    print(
        f"-- one manifest ({stats['hours']:.2f} h, {stats['rows']:.0f} utterances, {stats['mb']:.1f} MB "
        f"of FLAC, manifest {manifest.stat().st_size / 1024:.0f} KiB -> {groups} groups by default)",
        flush=True,
    )
    one, two = _one_and_two_workers(manifest, str(workdir / "out"))
    print(_line("write-shards, 1 worker", stats, one))
    print(_line("write-shards, 2 workers", stats, two))
    print(
        f"   speed-up of 2 workers over 1 on one manifest: {one['wall_s'] / two['wall_s']:.2f}x "
        f"by wall time (aim >= 1.6; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    memory = Path("/dev/shm")
    if memory.is_dir() and os.access(memory, os.W_OK):
        one, two = _one_and_two_workers(manifest, str(memory / f"asrflow-bench-{os.getpid()}"))
        print(
            f"   the same with the output in memory (tmpfs: no disk flush of {stats['mb']:.0f} MB): "
            f"{one['wall_s']:.2f} s / {two['wall_s']:.2f} s = {one['wall_s'] / two['wall_s']:.2f}x",
            flush=True,
        )


def _one_and_two_workers(manifest: Path, out: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The best figures of 1 and of 2 workers; short runs (a second or less), so more repeats,
    alternating, so that both see the same load."""
    ones, twos = [], []
    for _ in range(MANIFEST_REPEATS):
        ones.append(run_job("shards", str(manifest), out, "1", "0"))
        twos.append(run_job("shards", str(manifest), out, "2", "0"))
    one, two = ({key: min(f[key] for f in runs) for key in runs[0]} for runs in (ones, twos))
    return one, two


def _line(label: str, stats: dict[str, float], figures: dict[str, Any]) -> str:
    per_core_minute = stats["hours"] / (figures["cpu_s"] / 60)
    return (
        f"   {label:<36} {stats['mb'] / figures['wall_s']:7.1f} MB/s  "
        f"{per_core_minute:7.1f} audio h per core-minute  "
        f"wall {figures['wall_s']:.2f} s  cpu {figures['cpu_s']:.2f} s  "
        f"peak RSS {figures['max_rss_mb']:.0f} MB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--job", nargs="+", required=True, help="internal: run one measured job")
    args = parser.parse_args()
    _child_main(args.job)
    print(f"MAXRSS_KB {peak_rss_kb()}", file=sys.stderr)


def peak_rss_kb() -> int:
    """This process's peak resident memory (VmHWM).

    Not ``getrusage().ru_maxrss``: Linux carries that over ``exec`` from the process that
    forked, so a child of a big parent would report the parent's peak.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


if __name__ == "__main__":
    main()

"""``make bench`` section: the local demo's wall time against the sum of its steps' own
process times (kfp.local's orchestration overhead, as a ratio)."""

from __future__ import annotations

from pathlib import Path

from pipelines.local_run import run_local, wer_table


def run(workdir: Path) -> None:
    summary = run_local(workdir / "demo")
    overhead = summary["wall_s"] - summary["steps_s"]
    print(f"demo: {summary['num_tasks']} tasks, wall {summary['wall_s']:.1f} s")
    print(f"  sum of the steps' own process times: {summary['steps_s']:.1f} s")
    ratio = summary["wall_s"] / summary["steps_s"]
    print(f"  orchestration overhead: {overhead:.1f} s; wall / steps = {ratio:.3f}")
    print("  (below 1 where ParallelFor tasks overlap)")
    print(wer_table(summary["eval"]))

"""What ``kubectl asrflow runs`` prints: a table per run like ``kubectl get``, or JSON, or YAML."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from collections.abc import Sequence

from tabulate import tabulate

from pipelines.kubectl.summary import RunSummary, StepSummary, TrainJobSummary

OUTPUTS = ("table", "json", "yaml")
STEP_HEADER = ("STEP", "DATASET", "STATUS", "POOL", "TASKS", "RESTARTS", "PREEMPTED", "PROGRESS", "AGE")


def age(started: str, now: dt.datetime) -> str:
    """Time since an ISO timestamp as kubectl's AGE column writes it (``45s``, ``2h05m``,
    ``3d04h``), or "" when unknown.

    By hand: tqdm's ``2:05:00`` is a duration, not an age, and the kubernetes client has no
    formatter for it (kubectl's is Go).
    """
    if not started:
        return ""
    seconds = int((now - dt.datetime.fromisoformat(started)).total_seconds())
    if seconds < 0:
        return "0s"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Left-aligned columns two spaces apart, like ``kubectl get``."""
    # the header as a row: as headers=, tabulate would widen its columns by two more spaces
    text = tabulate([header, *rows], tablefmt="plain", disable_numparse=True)
    return [indent + line.rstrip() for line in text.splitlines()]


def step_row(step: StepSummary, now: dt.datetime) -> tuple[str, ...]:
    """A step's cells under :data:`STEP_HEADER`."""
    return (
        step.step,
        step.dataset or "-",
        step.status,
        step.pool or "-",
        f"{step.tasks_done}/{step.tasks}",
        str(step.restarts),
        str(step.preempted),
        step.progress or "-",
        age(step.started, now),
    )


def trainjob_line(job: TrainJobSummary) -> str:
    return f"  TrainJob {job.name} (step {job.step}): {job.state}, {job.nodes} node(s)"


def run_heading(run: RunSummary, now: dt.datetime) -> str:
    """``RUN <id>  <status>  workflow <name>  started <time> (<age> ago)``."""
    head = f"RUN {run.run}  {run.status}"
    if run.workflow:
        head += f"  workflow {run.workflow}"
    if run.started:
        head += f"  started {run.started} ({age(run.started, now)} ago)"
    return head


def format_runs(runs: Sequence[RunSummary], now: dt.datetime) -> str:
    """The human-readable listing ``kubectl asrflow runs`` prints."""
    if not runs:
        return "no asrflow runs found"
    blocks = []
    for run in runs:
        lines = [run_heading(run, now)]
        if run.steps:
            lines += table(STEP_HEADER, [step_row(s, now) for s in run.steps], indent="  ")
        lines += [
            f"  TrainJob {job.name} (step {job.step}): {job.state}, {job.nodes} node(s)"
            for job in run.trainjobs
        ]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def render_runs(runs: Sequence[RunSummary], output: str, now: dt.datetime) -> str:
    """``runs`` as ``-o`` asks: the table, or the summaries as JSON or YAML (fields in declared order)."""
    if output == "table":
        return format_runs(runs, now)
    data = [dataclasses.asdict(run) for run in runs]
    if output == "json":
        return json.dumps(data, indent=2)
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip("\n")

"""Runs and their steps, summed from pods, TrainJobs and the progress in the pods' logs.

Plain functions over Kubernetes objects (``V1Pod`` models, TrainJobs as the API returns
them), so that they are tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Iterable, Sequence
from typing import Any

from pipelines import placement, trainjob
from pipelines.kubectl.pods import (
    NO_RUN,
    WORKFLOW_LABEL,
    container_restarts,
    created,
    dataset_of,
    is_preempted,
    labels,
    node_pool,
    pod_state,
    retry_index,
    run_id,
    step_name,
    task_key,
)

# components/progress.py: "what: 120/300 (40%) 12.0/s ETA 00:15 k=v"
_PROGRESS = re.compile(r":\s(?P<done>\d+)/(?P<total>\d+)\s\((?P<pct>\d+)%\)")
_STEP = re.compile(r"\bstep[=:\s]\s*(?P<done>\d+)\s*/\s*(?P<total>\d+)")  # "step=1200/50000"
_TQDM = re.compile(r"(?P<pct>\d+)%\|[^|]*\|\s*(?P<done>\d+)/(?P<total>\d+)")  # Lightning's bar
_ETA = re.compile(r"\bETA\s+(\S+)")
_DONE_IN = re.compile(r"\bdone in\s+(\S+)")

RUNNING_STATES = ("Running",)
WAITING_STATES = ("Pending", "Unschedulable", "ContainerCreating", "PodInitializing")


@dataclasses.dataclass
class StepSummary:
    """One step of one run, over all its pods (fan-out tasks and retries).

    Attributes:
        step: the step name (``asrflow.dev/step``); TrainJob pods get a " (TrainJob)" suffix.
        dataset: ``asrflow.dev/dataset``, or "".
        status: the step's state: Running if any task runs, else waiting, else Succeeded when
            every task succeeded, else the state of the first task that did not.
        pool: the node pool(s) its pods asked for (``cloud.google.com/gke-nodepool``).
        tasks_done: tasks whose latest attempt succeeded.
        tasks: tasks seen (more than one under a ParallelFor or on several TrainJob nodes).
        restarts: new attempts (KFP retries, JobSet restarts) plus container restarts.
        preempted: pods the platform stopped (spot reclaim, node loss, eviction), seen so far.
        progress: from the newest running pod's log, "done/total (pct%) ETA …", or "done".
        pods: pod names, newest first.
        started: the first pod's creation time (ISO 8601).
    """

    step: str
    dataset: str
    status: str
    pool: str
    tasks_done: int
    tasks: int
    restarts: int
    preempted: int
    progress: str
    pods: list[str]
    started: str


@dataclasses.dataclass
class TrainJobSummary:
    name: str
    step: str
    state: str
    nodes: int
    created: str


@dataclasses.dataclass
class RunSummary:
    run: str
    workflow: str
    status: str
    started: str
    steps: list[StepSummary]
    trainjobs: list[TrainJobSummary]


def parse_progress(log_text: str) -> str:
    """The progress the newest progress line of a log reports, or "" when none does.

    Understands this project's progress lines (``what: 120/300 (40%) 12.0/s ETA 00:15``),
    ``step=N/M`` anywhere in a line, and a tqdm/Lightning bar (``45%|████▌ | 450/1000``).
    """
    for line in reversed(log_text.splitlines()):
        for pattern in (_PROGRESS, _STEP, _TQDM):
            match = pattern.search(line)
            if match is None:
                continue
            done, total = int(match.group("done")), int(match.group("total"))
            pct = int(match.group("pct")) if "pct" in match.groupdict() else None
            if pct is None:
                pct = int(100 * done / total) if total else 0
            text = f"{done}/{total} ({pct}%)"
            tail = line[match.end("total") :]
            if eta := _ETA.search(tail):
                text += f" ETA {eta.group(1)}"
            elif finished := _DONE_IN.search(tail):
                text += f" done in {finished.group(1)}"
            return text
    return ""


def progress_pods(pods: Iterable[Any]) -> list[Any]:
    """The pods whose progress ``runs`` shows: the newest running pod of each step of each run."""
    newest: dict[tuple[str, str, str], Any] = {}
    for pod in pods:
        if pod_state(pod) != "Running":
            continue
        key = (run_id(pod), step_name(pod), dataset_of(pod))
        if key not in newest or created(pod) > created(newest[key]):
            newest[key] = pod
    return list(newest.values())


def _iso(stamp: dt.datetime | None) -> str:
    return stamp.isoformat() if stamp is not None and stamp.year > 1 else ""


def combine_states(states: Sequence[str]) -> str:
    """The state of a group from its members' states (see :class:`StepSummary`)."""
    for wanted in (RUNNING_STATES, WAITING_STATES):
        for state in states:
            if state in wanted:
                return state
    for state in states:
        if state != "Succeeded":
            return state
    return "Succeeded" if states else "Pending"


def summarize_step(pods: Sequence[Any], progress: dict[str, str]) -> StepSummary:
    """One step's row from its pods; ``progress`` maps pod names to :func:`parse_progress` text."""
    by_task: dict[str, list[Any]] = {}
    for pod in pods:
        by_task.setdefault(task_key(pod), []).append(pod)
    latest = [max(group, key=lambda p: (retry_index(p), created(p))) for group in by_task.values()]
    states = [pod_state(p) for p in latest]
    restarts = sum(retry_index(p) for p in latest) + sum(container_restarts(p) for p in pods)
    newest_first = sorted(pods, key=created, reverse=True)
    status = combine_states(states)
    shown = ""
    for pod in newest_first:
        if pod_state(pod) == "Running" and progress.get(pod.metadata.name):
            shown = progress[pod.metadata.name]
            break
    if not shown and status == "Succeeded":
        shown = "done"
    first = newest_first[-1]
    return StepSummary(
        step=step_name(first),
        dataset=dataset_of(first),
        status=status,
        pool=",".join(sorted({node_pool(p) for p in pods if node_pool(p)})),
        tasks_done=sum(state == "Succeeded" for state in states),
        tasks=len(latest),
        restarts=restarts,
        preempted=sum(is_preempted(p) for p in pods),
        progress=shown,
        pods=[p.metadata.name for p in newest_first],
        started=_iso(created(first)),
    )


def summarize_trainjob(job: dict[str, Any]) -> TrainJobSummary:
    meta = job.get("metadata") or {}
    trainer = (job.get("spec") or {}).get("trainer") or {}
    stamp = meta.get("creationTimestamp") or ""
    if isinstance(stamp, dt.datetime):
        stamp = stamp.isoformat()
    return TrainJobSummary(
        name=meta.get("name", "?"),
        step=(meta.get("labels") or {}).get(placement.STEP_LABEL, "?"),
        state=trainjob.job_state(job),
        nodes=int(trainer.get("numNodes") or 1),
        created=str(stamp),
    )


def summarize(
    pods: Iterable[Any], trainjobs: Iterable[dict[str, Any]] = (), progress: dict[str, str] | None = None
) -> list[RunSummary]:
    """Runs, newest first, each with its steps in the order they started.

    Args:
        pods: ``V1Pod`` objects (labelled ``app.kubernetes.io/part-of=asrflow``).
        trainjobs: TrainJob objects as the API returns them (dicts).
        progress: pod name → :func:`parse_progress` text of that pod's log, where read.
    """
    progress = progress or {}
    by_run: dict[str, dict[tuple[str, str], list[Any]]] = {}
    for pod in pods:
        key = (step_name(pod), dataset_of(pod))
        by_run.setdefault(run_id(pod), {}).setdefault(key, []).append(pod)
    jobs_by_run: dict[str, list[TrainJobSummary]] = {}
    for job in trainjobs:
        job_labels = (job.get("metadata") or {}).get("labels") or {}
        jobs_by_run.setdefault(job_labels.get(placement.RUN_LABEL, NO_RUN), []).append(
            summarize_trainjob(job)
        )
    runs = []
    for run in set(by_run) | set(jobs_by_run):
        steps_pods = by_run.get(run, {})
        steps = sorted(
            (summarize_step(group, progress) for group in steps_pods.values()),
            key=lambda s: (s.started, s.step, s.dataset),
        )
        jobs = sorted(jobs_by_run.get(run, []), key=lambda j: j.created)
        workflows = sorted({labels(p).get(WORKFLOW_LABEL, "") for g in steps_pods.values() for p in g} - {""})
        starts = [s.started for s in steps if s.started] + [j.created for j in jobs if j.created]
        states = [s.status for s in steps] + [
            {"Complete": "Succeeded", "Failed": "Failed"}.get(j.state, "Running") for j in jobs
        ]
        runs.append(
            RunSummary(
                run=run,
                workflow=",".join(workflows),
                status=combine_states(states),
                started=min(starts) if starts else "",
                steps=steps,
                trainjobs=jobs,
            )
        )
    return sorted(runs, key=lambda r: r.started, reverse=True)

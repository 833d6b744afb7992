"""``kubectl asrflow``: the runs on a cluster, their steps, and a step's logs.

Installed as the console script ``kubectl-asrflow``, which kubectl runs as ``kubectl asrflow``.
It finds work by labels, so it needs no KFP API access, only the ``asrflow-viewer`` Role
(:data:`REQUIRED_RBAC`):

- pods with ``app.kubernetes.io/part-of=asrflow``; the step and dataset come from
  ``asrflow.dev/step`` and ``asrflow.dev/dataset`` (``pipelines/placement.py`` puts them on
  every task), the run from the label the KFP backend sets on every pod of a run
  (``pipeline/runid``) or, on TrainJob pods, from ``asrflow.dev/run``;
- TrainJobs (``trainer.kubeflow.org``) with the same labels.

The summary is computed by plain functions over Kubernetes objects (:func:`summarize`,
:func:`format_runs`), so it is tested without a cluster.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import re
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import click

from pipelines import placement, trainjob

# (API group, resource, verb) this module calls; the asrflow-viewer Role grants exactly these
# and the runner Role includes them (tests/pipelines/test_manifests.py checks both).
REQUIRED_RBAC = frozenset(
    {
        ("", "pods", "list"),  # runs, logs: find the pods by label
        ("", "pods/log", "get"),  # logs, and progress from a log's tail (follow is a get too)
        (trainjob.GROUP, trainjob.PLURAL, "list"),  # runs: multi-node training jobs
    }
)

SELECTOR = f"{placement.PART_OF_LABEL}={placement.PART_OF}"
WORKFLOW_LABEL = "workflows.argoproj.io/workflow"  # the Argo Workflow a KFP run executes as
NODE_NAME_ANNOTATION = "workflows.argoproj.io/node-name"  # "…executor(2)": retry 2 of a task
JOBSET_RESTART_LABEL = "jobset.sigs.k8s.io/restart-attempt"
KFP_CONTAINER = "main"  # the container that runs a KFP v2 task's code
TRAINJOB_SUFFIX = " (TrainJob)"
NO_RUN = "-"

# Why a pod stopped when the platform stopped it, not its own code: a spot VM reclaimed (the
# kubelet's graceful node shutdown), the node gone, or room made for another pod.
DISRUPTION_CONDITION = "DisruptionTarget"
DISRUPTION_REASONS = frozenset(
    {
        "TerminationByKubelet",
        "DeletionByPodGC",
        "DeletionByTaintManager",
        "PreemptionByScheduler",
        "EvictionByEvictionAPI",
    }
)
PREEMPTED_POD_REASONS = frozenset({"Terminated", "NodeShutdown", "Shutdown", "NodeLost", "Preempting"})

_RETRY_SUFFIX = re.compile(r"\((\d+)\)$")
_PROGRESS = re.compile(  # components/progress.py: "what: 120/300 (40%) 12.0/s ETA 15s k=v"
    r":\s(?P<done>\d+)/(?P<total>\d+)\s\((?P<pct>\d+)%\)"
)
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


# --- reading Kubernetes objects ------------------------------------------------------------


def _labels(pod: Any) -> dict[str, str]:
    return pod.metadata.labels or {}


def run_id(pod: Any) -> str:
    """The run a pod belongs to: KFP's ``pipeline/runid``, else ``asrflow.dev/run``."""
    labels = _labels(pod)
    return labels.get(placement.KFP_RUN_ID_LABEL) or labels.get(placement.RUN_LABEL) or NO_RUN


def is_trainjob_pod(pod: Any) -> bool:
    return trainjob.JOBSET_NAME_LABEL in _labels(pod)


def step_name(pod: Any) -> str:
    step = _labels(pod).get(placement.STEP_LABEL, "?")
    return step + TRAINJOB_SUFFIX if is_trainjob_pod(pod) else step


def retry_index(pod: Any) -> int:
    """Which attempt of its task a pod is: 0 for the first (Argo's node name or JobSet's label)."""
    labels = _labels(pod)
    if JOBSET_RESTART_LABEL in labels:
        return int(labels[JOBSET_RESTART_LABEL])
    match = _RETRY_SUFFIX.search((pod.metadata.annotations or {}).get(NODE_NAME_ANNOTATION, ""))
    return int(match.group(1)) if match else 0


def task_key(pod: Any) -> str:
    """What stays the same across retries of one task, and differs between fan-out tasks."""
    labels = _labels(pod)
    if is_trainjob_pod(pod):
        return f"{labels[trainjob.JOBSET_NAME_LABEL]}/{labels.get(trainjob.COMPLETION_INDEX_LABEL, '0')}"
    node = (pod.metadata.annotations or {}).get(NODE_NAME_ANNOTATION)
    return _RETRY_SUFFIX.sub("", node) if node else pod.metadata.name


def node_pool(pod: Any) -> str:
    return (pod.spec.node_selector or {}).get(placement.NODEPOOL_LABEL, "") if pod.spec else ""


def is_preempted(pod: Any) -> bool:
    """True when the platform stopped the pod: spot reclaim, node loss, eviction, preemption."""
    status = pod.status
    if status is None:
        return False
    for condition in status.conditions or []:
        if (
            condition.type == DISRUPTION_CONDITION
            and condition.status == "True"
            and condition.reason in DISRUPTION_REASONS
        ):
            return True
    return status.phase in ("Failed", "Unknown") and status.reason in PREEMPTED_POD_REASONS


def _main_container_status(pod: Any) -> Any:
    statuses = pod.status.container_statuses or []
    for name in (KFP_CONTAINER, trainjob.TRAINER_CONTAINER):
        for status in statuses:
            if status.name == name:
                return status
    return statuses[0] if statuses else None


def container_restarts(pod: Any) -> int:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return sum(status.restart_count or 0 for status in statuses)


def pod_state(pod: Any) -> str:
    """A one-word state: the phase, refined where the phase hides the useful part.

    ``Preempted`` for pods the platform stopped; ``Unschedulable`` for pods waiting for a node
    (the autoscaler adds one); the waiting reason of a container that cannot start
    (``ImagePullBackOff``, ``CreateContainerConfigError``: a missing Secret); the terminated
    reason of a failed container (``OOMKilled``, ``Error``).
    """
    status = pod.status
    if status is None or not status.phase:
        return "Pending"
    if is_preempted(pod):
        return "Preempted"
    main = _main_container_status(pod)
    if status.phase == "Pending":
        for condition in status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                return condition.reason or "Pending"
        if main is not None and main.state is not None and main.state.waiting is not None:
            return main.state.waiting.reason or "Pending"
        return "Pending"
    if status.phase == "Running" and main is not None and main.state is not None:
        if main.state.waiting is not None and main.state.waiting.reason:
            return main.state.waiting.reason
    if status.phase == "Failed" and main is not None and main.state is not None:
        terminated = main.state.terminated
        if terminated is not None and terminated.reason:
            return terminated.reason
    return status.phase


def parse_progress(log_text: str) -> str:
    """The progress the newest progress line of a log reports, or "" when none does.

    Understands this project's progress lines (``what: 120/300 (40%) 12.0/s ETA 15s``),
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


# --- summarising -------------------------------------------------------------------------


def _created(obj: Any) -> dt.datetime:
    stamp = obj.metadata.creation_timestamp
    return stamp if stamp is not None else dt.datetime.min.replace(tzinfo=dt.UTC)


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
    latest = [max(group, key=lambda p: (retry_index(p), _created(p))) for group in by_task.values()]
    states = [pod_state(p) for p in latest]
    restarts = sum(retry_index(p) for p in latest) + sum(container_restarts(p) for p in pods)
    newest_first = sorted(pods, key=_created, reverse=True)
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
        dataset=_labels(first).get(placement.DATASET_LABEL, ""),
        status=status,
        pool=",".join(sorted({node_pool(p) for p in pods if node_pool(p)})),
        tasks_done=sum(state == "Succeeded" for state in states),
        tasks=len(latest),
        restarts=restarts,
        preempted=sum(is_preempted(p) for p in pods),
        progress=shown,
        pods=[p.metadata.name for p in newest_first],
        started=_iso(_created(first)),
    )


def summarize_trainjob(job: dict[str, Any]) -> TrainJobSummary:
    meta = job.get("metadata") or {}
    trainer = (job.get("spec") or {}).get("trainer") or {}
    created = meta.get("creationTimestamp") or ""
    if isinstance(created, dt.datetime):
        created = created.isoformat()
    return TrainJobSummary(
        name=meta.get("name", "?"),
        step=(meta.get("labels") or {}).get(placement.STEP_LABEL, "?"),
        state=trainjob.job_state(job),
        nodes=int(trainer.get("numNodes") or 1),
        created=str(created),
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
        key = (step_name(pod), _labels(pod).get(placement.DATASET_LABEL, ""))
        by_run.setdefault(run_id(pod), {}).setdefault(key, []).append(pod)
    jobs_by_run: dict[str, list[TrainJobSummary]] = {}
    for job in trainjobs:
        labels = (job.get("metadata") or {}).get("labels") or {}
        jobs_by_run.setdefault(labels.get(placement.RUN_LABEL, NO_RUN), []).append(summarize_trainjob(job))
    runs = []
    for run in set(by_run) | set(jobs_by_run):
        steps_pods = by_run.get(run, {})
        steps = sorted(
            (summarize_step(group, progress) for group in steps_pods.values()),
            key=lambda s: (s.started, s.step, s.dataset),
        )
        jobs = sorted(jobs_by_run.get(run, []), key=lambda j: j.created)
        workflows = sorted(
            {_labels(p).get(WORKFLOW_LABEL, "") for g in steps_pods.values() for p in g} - {""}
        )
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


# --- formatting --------------------------------------------------------------------------


def age(started: str, now: dt.datetime) -> str:
    """``2h05m`` style time since an ISO timestamp, or "" when unknown."""
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
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    return [
        indent + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]


STEP_HEADER = ("STEP", "DATASET", "STATUS", "POOL", "TASKS", "RESTARTS", "PREEMPTED", "PROGRESS", "AGE")


def format_runs(runs: Sequence[RunSummary], now: dt.datetime) -> str:
    """The human-readable listing ``kubectl asrflow runs`` prints."""
    if not runs:
        return "no asrflow runs found"
    lines: list[str] = []
    for run in runs:
        if lines:
            lines.append("")
        head = f"RUN {run.run}  {run.status}"
        if run.workflow:
            head += f"  workflow {run.workflow}"
        if run.started:
            head += f"  started {run.started} ({age(run.started, now)} ago)"
        lines.append(head)
        rows = [
            (
                s.step,
                s.dataset or "-",
                s.status,
                s.pool or "-",
                f"{s.tasks_done}/{s.tasks}",
                str(s.restarts),
                str(s.preempted),
                s.progress or "-",
                age(s.started, now),
            )
            for s in run.steps
        ]
        if rows:
            lines += table(STEP_HEADER, rows, indent="  ")
        for job in run.trainjobs:
            lines.append(f"  TrainJob {job.name} (step {job.step}): {job.state}, {job.nodes} node(s)")
    return "\n".join(lines)


# --- choosing pods for logs --------------------------------------------------------------


def match_run(pods: Sequence[Any], run: str) -> list[Any]:
    """Pods of the run named by its id, a unique prefix of it, or its Argo workflow name.

    Raises:
        click.UsageError: the prefix matches several runs.
    """
    exact = [p for p in pods if run_id(p) == run or _labels(p).get(WORKFLOW_LABEL) == run]
    if exact:
        return exact
    ids = sorted({run_id(p) for p in pods if run_id(p).startswith(run)})
    if len(ids) > 1:
        raise click.UsageError(f"run {run!r} is ambiguous: it starts {', '.join(ids)}")
    return [p for p in pods if ids and run_id(p) == ids[0]]


def choose_pod(
    pods: Sequence[Any], run: str, step: str, dataset: str | None = None, attempt: int | None = None
) -> tuple[Any, list[Any]]:
    """The pod whose log ``logs RUN STEP`` shows, and the step's other pods.

    The newest pod of the step, KFP's own before a TrainJob's (``--pod`` picks another). With
    ``attempt``, the newest pod of that retry.

    Raises:
        click.ClickException: no pod matches, with what would.
    """
    candidates = [
        p
        for p in match_run(pods, run)
        if _labels(p).get(placement.STEP_LABEL) == step
        and (dataset is None or _labels(p).get(placement.DATASET_LABEL) == dataset)
        and (attempt is None or retry_index(p) == attempt)
    ]
    if not candidates:
        steps = sorted({_labels(p).get(placement.STEP_LABEL, "?") for p in match_run(pods, run)})
        known = f"; its steps: {', '.join(steps)}" if steps else "; `kubectl asrflow runs` lists the runs"
        raise click.ClickException(f"no pod of run {run!r} step {step!r} matches{known}")
    ordered = sorted(candidates, key=lambda p: (not is_trainjob_pod(p), _created(p)), reverse=True)
    return ordered[0], ordered[1:]


def log_container(pod: Any) -> str:
    names = [c.name for c in pod.spec.containers]
    for name in (KFP_CONTAINER, trainjob.TRAINER_CONTAINER):
        if name in names:
            return name
    return names[0]


# --- the cluster -------------------------------------------------------------------------


def _api(kubeconfig: str | None, context: str | None) -> tuple[Any, Any]:
    from kubernetes import client, config

    try:
        config.load_kube_config(config_file=kubeconfig, context=context)
    except config.ConfigException:
        config.load_incluster_config()
    return client.CoreV1Api(), client.CustomObjectsApi()


def list_pods(core: Any, namespace: str) -> list[Any]:
    return core.list_namespaced_pod(namespace, label_selector=SELECTOR).items


def list_trainjobs(custom: Any, namespace: str) -> list[dict[str, Any]]:
    """TrainJobs with asrflow's label; none where Kubeflow Trainer is not installed."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = custom.list_namespaced_custom_object(
            trainjob.GROUP, trainjob.VERSION, namespace, trainjob.PLURAL, label_selector=SELECTOR
        )
    except ApiException as err:
        if err.status == 404:
            return []
        raise
    return response.get("items", [])


def progress_pods(pods: Iterable[Any]) -> list[Any]:
    """The pods whose progress ``runs`` shows: the newest running pod of each step of each run."""
    newest: dict[tuple[str, str, str], Any] = {}
    for pod in pods:
        if pod_state(pod) != "Running":
            continue
        key = (run_id(pod), step_name(pod), _labels(pod).get(placement.DATASET_LABEL, ""))
        if key not in newest or _created(pod) > _created(newest[key]):
            newest[key] = pod
    return list(newest.values())


def read_progress(core: Any, pods: Sequence[Any], namespace: str, tail_lines: int = 200) -> dict[str, str]:
    """Progress from the tail of each step's newest running pod's log (a failed read shows none)."""
    from kubernetes.client.exceptions import ApiException

    progress = {}
    for pod in progress_pods(pods):
        try:
            text = core.read_namespaced_pod_log(
                pod.metadata.name, namespace, container=log_container(pod), tail_lines=tail_lines
            )
        except ApiException:
            continue
        progress[pod.metadata.name] = parse_progress(text)
    return progress


# --- the command line --------------------------------------------------------------------

_namespace_option = click.option(
    "-n",
    "--namespace",
    envvar="ASRFLOW_NAMESPACE",
    default=placement.NAMESPACE,
    show_default=True,
    help="Where the runs are (env ASRFLOW_NAMESPACE).",
)
_kubeconfig_option = click.option(
    "--kubeconfig", default=None, help="A kubeconfig file (default: kubectl's)."
)
_context_option = click.option("--context", default=None, help="The kubeconfig context to use.")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def cli() -> None:
    """Inspect asrflow runs on a cluster: `kubectl asrflow runs`, `kubectl asrflow logs RUN STEP`.

    Finds pods labelled app.kubernetes.io/part-of=asrflow; the run is KFP's pipeline/runid
    pod label (asrflow.dev/run on TrainJob pods), the step and dataset are asrflow.dev/step
    and asrflow.dev/dataset. Needs only the asrflow-viewer Role (list pods and TrainJobs,
    read pod logs).
    """


@cli.command()
@_namespace_option
@_kubeconfig_option
@_context_option
@click.option("--run", "run_filter", default=None, help="Only this run (its id, a prefix, or workflow).")
@click.option("--progress/--no-progress", default=True, help="Read running pods' logs for progress.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
def runs(
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    run_filter: str | None,
    progress: bool,
    output: str,
) -> None:
    """List runs, newest first, and each run's steps.

    \b
    Columns of a step:
      STATUS     Running if any task runs; else Pending/Unschedulable (waiting for a node,
                 which the autoscaler adds) or a container's waiting reason
                 (CreateContainerConfigError: a missing Secret); Succeeded when all tasks did;
                 else the first failure: Failed, OOMKilled, Error, or Preempted.
      POOL       the node pool the pods asked for (cloud.google.com/gke-nodepool).
      TASKS      tasks whose latest attempt succeeded / tasks (a ParallelFor fans out).
      RESTARTS   KFP retries (each a new pod; Argo's retry number on the newest pod) plus
                 container restarts inside pods.
      PREEMPTED  pods the platform stopped: a spot VM reclaimed (graceful node shutdown), a
                 node lost, an eviction or a scheduler preemption. Pods of deleted nodes are
                 garbage-collected, so this counts the ones still visible; RESTARTS counts all.
      PROGRESS   from the newest progress line in a running pod's last 200 log lines: this
                 project's "what: N/M (P%) … ETA T", a "step=N/M", or a tqdm bar "P%|…| N/M".
    TrainJobs (multi-node training) are listed under their run with their state.
    """
    core, custom = _api(kubeconfig, context)
    pods = list_pods(core, namespace)
    if run_filter:
        pods = match_run(pods, run_filter)
    jobs = list_trainjobs(custom, namespace)
    if run_filter:
        run_ids = {run_id(p) for p in pods} | {run_filter}
        jobs = [j for j in jobs if (j["metadata"].get("labels") or {}).get(placement.RUN_LABEL) in run_ids]
    found = summarize(pods, jobs, read_progress(core, pods, namespace) if progress else {})
    if output == "json":
        click.echo(json.dumps([dataclasses.asdict(r) for r in found], indent=2))
    else:
        click.echo(format_runs(found, dt.datetime.now(dt.UTC)))


@cli.command()
@click.argument("run")
@click.argument("step")
@_namespace_option
@_kubeconfig_option
@_context_option
@click.option("--dataset", default=None, help="Only the step's pods for this dataset.")
@click.option("--attempt", type=int, default=None, help="This retry (0 is the first) instead of the newest.")
@click.option("--pod", "pod_name", default=None, help="This pod of the step (see `runs -o json`).")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines until the pod ends.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
def logs(
    run: str,
    step: str,
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    dataset: str | None,
    attempt: int | None,
    pod_name: str | None,
    follow: bool,
    tail: int | None,
) -> None:
    """Print the log of a step of a run (the newest attempt unless told otherwise).

    RUN is the KFP run id, a unique prefix of it, or the run's Argo workflow name; STEP is the
    step name as `runs` shows it (download, write-shards, train, …). The log is the step's own
    container (main for KFP tasks, node for TrainJob pods). When the step has several pods
    (fan-out tasks, retries, TrainJob nodes) the others are named on stderr.
    """
    core, _ = _api(kubeconfig, context)
    pods = list_pods(core, namespace)
    pod, others = choose_pod(pods, run, step, dataset, attempt)
    if pod_name:
        named = [p for p in [pod, *others] if p.metadata.name == pod_name]
        if not named:
            raise click.ClickException(f"pod {pod_name!r} is not a pod of run {run!r} step {step!r}")
        pod = named[0]
        others = [p for p in [*others] if p.metadata.name != pod_name]
    if others:
        names = ", ".join(f"{p.metadata.name} ({pod_state(p)})" for p in others[:8])
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        click.echo(f"# {pod.metadata.name} ({pod_state(pod)}); other pods: {names}{more}", err=True)
    kwargs: dict[str, Any] = {"container": log_container(pod)}
    if tail is not None:
        kwargs["tail_lines"] = tail
    if follow:
        response = core.read_namespaced_pod_log(
            pod.metadata.name, namespace, follow=True, _preload_content=False, **kwargs
        )
        for chunk in response.stream():
            sys.stdout.write(chunk.decode("utf-8", errors="replace"))
            sys.stdout.flush()
    else:
        click.echo(core.read_namespaced_pod_log(pod.metadata.name, namespace, **kwargs), nl=False)


def main() -> None:
    """The ``kubectl-asrflow`` console script; kubectl runs it as ``kubectl asrflow``."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    cli.main(prog_name="kubectl asrflow" if prog.startswith("kubectl-") else prog or "kubectl asrflow")


if __name__ == "__main__":
    main()

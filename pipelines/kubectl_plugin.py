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

Like kubectl it reads ``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``, else a
pod's service account (:func:`resolve_target`); ``-n``, ``--context`` and ``--kubeconfig`` go
before or after the subcommand; what goes wrong reaching the cluster is one line on stderr
(:func:`explain`), with the traceback only under ``--debug``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import functools
import json
import os
import re
import sys
import traceback
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
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

NAMESPACE_ENV = "ASRFLOW_NAMESPACE"
DEFAULT_KUBECONFIG = "~/.kube/config"  # kubectl's, when $KUBECONFIG is unset
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"  # the kubelet sets it in every pod
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
VIEWER_ROLE_MANIFEST = "manifests/base/viewer-role.yaml"
GET_CREDENTIALS = "gcloud container clusters get-credentials CLUSTER --location LOCATION"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # a list or a log's tail; a followed log has no read timeout
REQUEST_TIMEOUT = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
_CONNECTION_PREFIX = re.compile(r"^(?:<[^>]*>|\w+\(host=[^)]*\)): ")  # urllib3's "<…Connection…>: "


class ClusterError(click.ClickException):
    """Why the cluster could not be found, reached or read, in one line (``--debug``: the traceback)."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # a YAML or TLS error's text spans lines


@dataclasses.dataclass(frozen=True)
class Target:
    """Where ``kubectl asrflow`` looks, resolved as kubectl resolves it (:func:`resolve_target`).

    Attributes:
        namespace: the namespace of the runs.
        kubeconfig: the kubeconfig file(s) in use, ``os.pathsep``-joined; "" for in-cluster config.
        context: the kubeconfig context in use; "" for in-cluster config.
    """

    namespace: str
    kubeconfig: str = ""
    context: str = ""

    def describe(self) -> str:
        where = f"context {self.context}" if self.context else "in-cluster config"
        return f"{where}, namespace {self.namespace}"


@dataclasses.dataclass(frozen=True)
class Cluster:
    """API clients for a :class:`Target`; ``host`` is the API server's URL."""

    target: Target
    host: str
    core: Any
    custom: Any
    debug: bool = False


def kubeconfig_files(kubeconfig: str | None) -> list[str]:
    """The kubeconfig files kubectl would read: the readable ones among its candidates.

    ``--kubeconfig`` (which must be readable), else the ``$KUBECONFIG`` list (missing files
    skipped, as kubectl skips them), else ``~/.kube/config`` when it exists.

    Raises:
        ClusterError: ``--kubeconfig``, or a file that exists, cannot be read.
    """
    if kubeconfig:
        candidates, source = [kubeconfig], "--kubeconfig"
    elif os.environ.get("KUBECONFIG"):
        candidates, source = os.environ["KUBECONFIG"].split(os.pathsep), "$KUBECONFIG"
    else:
        candidates, source = [DEFAULT_KUBECONFIG], DEFAULT_KUBECONFIG
    found = []
    for path in (os.path.expanduser(c) for c in candidates if c):
        if not kubeconfig and not os.path.exists(path):
            continue
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            raise ClusterError(f"cannot read kubeconfig {path} (from {source}): {err.strerror}") from err
        found.append(path)
    return found


def no_kubeconfig_message() -> str:
    """What was looked for when there is no kubeconfig and no in-cluster config, and what to do."""
    env = os.environ.get("KUBECONFIG")
    if env:
        looked = f"$KUBECONFIG ({env}) names no file that exists"
    else:
        looked = f"$KUBECONFIG is unset and {os.path.expanduser(DEFAULT_KUBECONFIG)} does not exist"
    return (
        f"no kubeconfig: {looked}, and this is not a pod in a cluster (${IN_CLUSTER_ENV} is unset); "
        f"get one with `{GET_CREDENTIALS}`, or pass --kubeconfig FILE"
    )


def kubeconfig_context(files: Sequence[str], context: str | None) -> tuple[str, str]:
    """The context to use (``context``, else the current one) and the namespace it names ("" if none).

    Raises:
        ClusterError: the files are no valid kubeconfig, set no current context, or lack ``context``.
    """
    from kubernetes.config import kube_config

    joined = os.pathsep.join(files)
    try:
        merged = kube_config.KubeConfigMerger(joined).config
        contexts = {
            entry["name"]: entry.get("context") or {}
            for entry in (_plain(node) for node in merged.value.get("contexts") or [])
        }
    except Exception as err:  # a YAML error, a missing key, not a mapping: all say the same
        raise ClusterError(f"kubeconfig {joined} is not a valid kubeconfig: {err}") from err
    name = context or merged.value.get("current-context") or ""
    known = ", ".join(sorted(contexts)) or "none"
    if not name:
        raise ClusterError(f"kubeconfig {joined} sets no current-context; pass --context (one of: {known})")
    if name not in contexts:
        raise ClusterError(f"context {name!r} is not in kubeconfig {joined} (its contexts: {known})")
    return name, contexts[name].get("namespace") or ""


def _plain(node: Any) -> Any:
    """A kubeconfig entry as a dict (the merger wraps entries of merged files in ConfigNodes)."""
    return getattr(node, "value", node)


def service_account_namespace() -> str:
    """The namespace of the pod this runs in (its service account's), or "" when unknown."""
    try:
        with open(SERVICE_ACCOUNT_NAMESPACE, encoding="utf-8") as file:
            return file.read().strip()
    except OSError:
        return ""


def resolve_target(
    namespace: str | None = None, kubeconfig: str | None = None, context: str | None = None
) -> Target:
    """Where to look, resolved as kubectl resolves it.

    The kubeconfig is ``kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``; with none
    of them, the in-cluster config of the pod this runs in. The namespace is ``namespace``, else
    ``$ASRFLOW_NAMESPACE``, else the context's ``namespace`` (in a pod: its service account's),
    else :data:`placement.NAMESPACE`.

    Args:
        namespace: ``-n/--namespace``, or None.
        kubeconfig: ``--kubeconfig``, or None.
        context: ``--context``, or None for the kubeconfig's current context.

    Raises:
        ClusterError: no kubeconfig and not in a pod, an unreadable or invalid kubeconfig, an
            unknown context.
    """
    files = kubeconfig_files(kubeconfig)
    if files:
        name, default = kubeconfig_context(files, context)
    elif os.environ.get(IN_CLUSTER_ENV) and not context:
        name, default = "", service_account_namespace()
    else:
        raise ClusterError(no_kubeconfig_message())
    chosen = namespace or os.environ.get(NAMESPACE_ENV) or default or placement.NAMESPACE
    return Target(namespace=chosen, kubeconfig=os.pathsep.join(files), context=name)


def connect(target: Target, debug: bool = False) -> Cluster:
    """API clients for ``target``; no request is made yet.

    Raises:
        ClusterError: the context's cluster or user, or the in-cluster config, cannot be loaded.
    """
    from kubernetes import client, config

    configuration = client.Configuration()
    try:
        if target.kubeconfig:
            config.load_kube_config(
                config_file=target.kubeconfig, context=target.context, client_configuration=configuration
            )
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError, ValueError) as err:
        raise ClusterError(f"cannot load {target.describe()}: {err}") from err
    configuration.retries = 0  # one try and a clear error, as kubectl does (urllib3 logs retries)
    api = client.ApiClient(configuration)
    return Cluster(target, configuration.host, client.CoreV1Api(api), client.CustomObjectsApi(api), debug)


def connection_failure(err: BaseException) -> str:
    """The root cause of a failed connection ("Connection refused"), without urllib3's reprs."""
    reason = getattr(err, "reason", None) or err  # MaxRetryError wraps the last failure
    for cause in (reason.__cause__, reason.__context__):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror
    texts = [arg for arg in reason.args if isinstance(arg, str)]  # (connection, message) for a timeout
    return _CONNECTION_PREFIX.sub("", texts[-1] if texts else str(reason))


def _status_message(err: Any) -> str:
    """The ``message`` of the Kubernetes Status an API error carries, as ": …", or ""."""
    try:
        message = json.loads(err.body or "{}").get("message", "")
    except (ValueError, TypeError, AttributeError):
        message = ""
    return f": {message}" if message else ""


def explain(err: BaseException, cluster: Cluster) -> str | None:
    """One line saying what went wrong talking to the API server, or None when ``err`` is not that."""
    import urllib3
    from kubernetes.client.exceptions import ApiException

    where = f"the API server at {cluster.host} ({cluster.target.describe()})"
    if isinstance(err, urllib3.exceptions.HTTPError):
        return f"cannot reach {where}: {connection_failure(err)}"
    if not isinstance(err, ApiException):
        return None
    if not err.status:  # the client's wrapping of TLS and protocol errors
        return f"cannot reach {where}: {err.reason}"
    role, namespace = placement.VIEWER_ROLE, cluster.target.namespace
    needs = f"kubectl asrflow needs the {role} Role in namespace {namespace} ({VIEWER_ROLE_MANIFEST})"
    if err.status == 401:
        renew = f"renew them (`{GET_CREDENTIALS}`)"
        return f"{where} did not accept your credentials (401 Unauthorized): {renew}; {needs}"
    if err.status == 403:
        return (
            f"{where} refused (403 Forbidden{_status_message(err)}); {needs}: ask for "
            f"`kubectl -n {namespace} create rolebinding {role}-USER --role {role} --user USER`"
        )
    return f"{where} answered {err.status} {err.reason}{_status_message(err)}"


@contextlib.contextmanager
def reporting(cluster: Cluster) -> Iterator[None]:
    """Turns a failed API call into a one-line :class:`ClusterError`; ``--debug`` prints the traceback."""
    import urllib3

    try:
        # a kubeconfig's insecure-skip-tls-verify is its owner's choice, which kubectl accepts silently
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            yield
    except Exception as err:
        message = explain(err, cluster)
        if message is None:
            raise
        if cluster.debug:
            traceback.print_exception(err)
        raise ClusterError(message) from err


def list_pods(core: Any, namespace: str) -> list[Any]:
    return core.list_namespaced_pod(
        namespace, label_selector=SELECTOR, _request_timeout=REQUEST_TIMEOUT
    ).items


def list_trainjobs(custom: Any, namespace: str) -> list[dict[str, Any]]:
    """TrainJobs with asrflow's label; none where Kubeflow Trainer is not installed."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = custom.list_namespaced_custom_object(
            trainjob.GROUP,
            trainjob.VERSION,
            namespace,
            trainjob.PLURAL,
            label_selector=SELECTOR,
            _request_timeout=REQUEST_TIMEOUT,
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
                pod.metadata.name,
                namespace,
                container=log_container(pod),
                tail_lines=tail_lines,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ApiException:
            continue
        progress[pod.metadata.name] = parse_progress(text)
    return progress


# --- the command line --------------------------------------------------------------------

OUTPUTS = ("table", "json", "yaml")


def render_runs(runs: Sequence[RunSummary], output: str, now: dt.datetime) -> str:
    """``runs`` as ``-o`` asks: the table, or the summaries as JSON or YAML (fields in declared order)."""
    if output == "table":
        return format_runs(runs, now)
    data = [dataclasses.asdict(run) for run in runs]
    if output == "json":
        return json.dumps(data, indent=2)
    import yaml

    return yaml.safe_dump(data, sort_keys=False).rstrip("\n")


@dataclasses.dataclass(frozen=True)
class ClusterFlags:
    """-n/--namespace, --kubeconfig, --context and --debug, as given before or after the subcommand."""

    namespace: str | None = None
    kubeconfig: str | None = None
    context: str | None = None
    debug: bool = False

    def over(self, outer: ClusterFlags) -> ClusterFlags:
        """These flags where given, else ``outer``'s: the subcommand's win over the group's."""
        return ClusterFlags(
            namespace=self.namespace or outer.namespace,
            kubeconfig=self.kubeconfig or outer.kubeconfig,
            context=self.context or outer.context,
            debug=self.debug or outer.debug,
        )


_CLUSTER_OPTIONS = (
    click.option(
        "-n",
        "--namespace",
        default=None,
        help=f"Where the runs are. Default: ${NAMESPACE_ENV}, else the namespace of the kubeconfig "
        f"context (in a pod: its service account's), else {placement.NAMESPACE}.",
    ),
    click.option(
        "--kubeconfig",
        default=None,
        help=f"A kubeconfig file. Default: kubectl's ($KUBECONFIG, else {DEFAULT_KUBECONFIG}; in a pod "
        "without one, its service account).",
    ),
    click.option("--context", default=None, help="The kubeconfig context. Default: its current-context."),
    click.option("--debug", is_flag=True, help="Print the traceback of a cluster error too."),
)


def cluster_options(command: Callable[..., None]) -> Callable[..., None]:
    """Adds the cluster options to a command; it receives them as one ``flags: ClusterFlags``."""

    @functools.wraps(command)
    def with_flags(
        *args: Any, namespace: str | None, kubeconfig: str | None, context: str | None, debug: bool, **kw: Any
    ) -> None:
        command(*args, flags=ClusterFlags(namespace, kubeconfig, context, debug), **kw)

    for option in reversed(_CLUSTER_OPTIONS):
        with_flags = option(with_flags)
    return with_flags


def open_cluster(flags: ClusterFlags) -> Cluster:
    """The cluster a subcommand's flags name, over those given before the subcommand.

    Raises:
        ClusterError: see :func:`resolve_target` and :func:`connect`.
    """
    flags = flags.over(click.get_current_context().find_object(ClusterFlags) or ClusterFlags())
    try:
        target = resolve_target(flags.namespace, flags.kubeconfig, flags.context)
        return connect(target, flags.debug)
    except ClusterError as err:
        if flags.debug:
            traceback.print_exception(err.__cause__ or err)
        raise


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@cluster_options
def cli(flags: ClusterFlags) -> None:
    """Inspect asrflow runs on a cluster: `kubectl asrflow runs`, `kubectl asrflow logs RUN STEP`.

    Finds pods labelled app.kubernetes.io/part-of=asrflow; the run is KFP's pipeline/runid
    pod label (asrflow.dev/run on TrainJob pods), the step and dataset are asrflow.dev/step
    and asrflow.dev/dataset. Needs only the asrflow-viewer Role (list pods and TrainJobs,
    read pod logs).

    The options below go before the subcommand or after it (`kubectl asrflow -n NS runs`,
    `kubectl asrflow runs -n NS`); given in both places, the one after wins.
    """
    click.get_current_context().obj = flags


@cli.command()
@cluster_options
@click.option("--run", "run_filter", default=None, help="Only this run (its id, a prefix, or workflow).")
@click.option("--progress/--no-progress", default=True, help="Read running pods' logs for progress.")
@click.option(
    "-o",
    "--output",
    type=click.Choice(OUTPUTS),
    default="table",
    show_default=True,
    help="json and yaml: the run summaries with all their fields (every pod of a step, newest first).",
)
def runs(flags: ClusterFlags, run_filter: str | None, progress: bool, output: str) -> None:
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
    cluster = open_cluster(flags)
    namespace = cluster.target.namespace
    with reporting(cluster):
        pods = list_pods(cluster.core, namespace)
        if run_filter:
            pods = match_run(pods, run_filter)
        jobs = list_trainjobs(cluster.custom, namespace)
        if run_filter:
            run_ids = {run_id(p) for p in pods} | {run_filter}
            jobs = [
                j for j in jobs if (j["metadata"].get("labels") or {}).get(placement.RUN_LABEL) in run_ids
            ]
        found = summarize(pods, jobs, read_progress(cluster.core, pods, namespace) if progress else {})
    click.echo(render_runs(found, output, dt.datetime.now(dt.UTC)))


@cli.command()
@click.argument("run")
@click.argument("step")
@cluster_options
@click.option("--dataset", default=None, help="Only the step's pods for this dataset.")
@click.option("--attempt", type=int, default=None, help="This retry (0 is the first) instead of the newest.")
@click.option("--pod", "pod_name", default=None, help="This pod of the step (see `runs -o json`).")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new lines until the pod ends.")
@click.option("--tail", type=int, default=None, help="Only the last N lines.")
def logs(
    run: str,
    step: str,
    flags: ClusterFlags,
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
    cluster = open_cluster(flags)
    with reporting(cluster):
        pods = list_pods(cluster.core, cluster.target.namespace)
        pod = pick_log_pod(pods, run, step, dataset, attempt, pod_name)
        print_log(cluster, pod, follow=follow, tail=tail)


def pick_log_pod(
    pods: Sequence[Any], run: str, step: str, dataset: str | None, attempt: int | None, pod_name: str | None
) -> Any:
    """:func:`choose_pod`, or the step's pod named ``pod_name``; names the step's other pods on stderr.

    Raises:
        click.ClickException: no pod matches.
    """
    pod, others = choose_pod(pods, run, step, dataset, attempt)
    if pod_name:
        named = [p for p in [pod, *others] if p.metadata.name == pod_name]
        if not named:
            raise click.ClickException(f"pod {pod_name!r} is not a pod of run {run!r} step {step!r}")
        pod = named[0]
        others = [p for p in others if p.metadata.name != pod_name]
    if others:
        names = ", ".join(f"{p.metadata.name} ({pod_state(p)})" for p in others[:8])
        more = f" and {len(others) - 8} more" if len(others) > 8 else ""
        click.echo(f"# {pod.metadata.name} ({pod_state(pod)}); other pods: {names}{more}", err=True)
    return pod


def print_log(cluster: Cluster, pod: Any, *, follow: bool, tail: int | None) -> None:
    """Writes the log of ``pod``'s own container to stdout; with ``follow``, until the pod ends."""
    kwargs: dict[str, Any] = {"container": log_container(pod)}
    if tail is not None:
        kwargs["tail_lines"] = tail
    name, namespace = pod.metadata.name, cluster.target.namespace
    if not follow:
        text = cluster.core.read_namespaced_pod_log(
            name, namespace, _request_timeout=REQUEST_TIMEOUT, **kwargs
        )
        click.echo(text, nl=False)
        return
    response = cluster.core.read_namespaced_pod_log(
        name,
        namespace,
        follow=True,
        _preload_content=False,
        _request_timeout=(CONNECT_TIMEOUT_S, None),
        **kwargs,
    )
    for chunk in response.stream():
        sys.stdout.write(chunk.decode("utf-8", errors="replace"))
        sys.stdout.flush()


def main() -> None:
    """The ``kubectl-asrflow`` console script; kubectl runs it as ``kubectl asrflow``."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    cli.main(prog_name="kubectl asrflow" if prog.startswith("kubectl-") else prog or "kubectl asrflow")


if __name__ == "__main__":
    main()

"""One pod as ``kubectl asrflow`` sees it: its run, step, task, attempt and state; the pod to show.

asrflow's pods carry ``app.kubernetes.io/part-of=asrflow``; the step and dataset come from
``asrflow.dev/step`` and ``asrflow.dev/dataset`` (``pipelines/placement.py`` puts them on
every task), the run from the label the KFP backend sets on every pod of a run
(``pipeline/runid``) or, on TrainJob pods, from ``asrflow.dev/run``. Pods are
``kubernetes.client`` ``V1Pod`` objects; nothing here calls the API server.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Any

import click

from pipelines import placement, trainjob

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


def labels(pod: Any) -> dict[str, str]:
    return pod.metadata.labels or {}


def dataset_of(pod: Any) -> str:
    """``asrflow.dev/dataset``, or ""."""
    return labels(pod).get(placement.DATASET_LABEL, "")


def created(obj: Any) -> dt.datetime:
    """The creation time, or the earliest time when the API has not set it yet."""
    stamp = obj.metadata.creation_timestamp
    return stamp if stamp is not None else dt.datetime.min.replace(tzinfo=dt.UTC)


def run_id(pod: Any) -> str:
    """The run a pod belongs to: KFP's ``pipeline/runid``, else ``asrflow.dev/run``."""
    found = labels(pod)
    return found.get(placement.KFP_RUN_ID_LABEL) or found.get(placement.RUN_LABEL) or NO_RUN


def is_trainjob_pod(pod: Any) -> bool:
    return trainjob.JOBSET_NAME_LABEL in labels(pod)


def step_name(pod: Any) -> str:
    """``asrflow.dev/step``; a TrainJob's pods get a " (TrainJob)" suffix."""
    step = labels(pod).get(placement.STEP_LABEL, "?")
    return step + TRAINJOB_SUFFIX if is_trainjob_pod(pod) else step


def retry_index(pod: Any) -> int:
    """Which attempt of its task a pod is: 0 for the first (Argo's node name or JobSet's label)."""
    found = labels(pod)
    if JOBSET_RESTART_LABEL in found:
        return int(found[JOBSET_RESTART_LABEL])
    match = _RETRY_SUFFIX.search((pod.metadata.annotations or {}).get(NODE_NAME_ANNOTATION, ""))
    return int(match.group(1)) if match else 0


def task_key(pod: Any) -> str:
    """What stays the same across retries of one task, and differs between fan-out tasks."""
    found = labels(pod)
    if is_trainjob_pod(pod):
        return f"{found[trainjob.JOBSET_NAME_LABEL]}/{found.get(trainjob.COMPLETION_INDEX_LABEL, '0')}"
    node = (pod.metadata.annotations or {}).get(NODE_NAME_ANNOTATION)
    return _RETRY_SUFFIX.sub("", node) if node else pod.metadata.name


def node_pool(pod: Any) -> str:
    """The node pool the pod asked for (``cloud.google.com/gke-nodepool``), or ""."""
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


def log_container(pod: Any) -> str:
    """The container whose log is the step's: ``main`` for KFP tasks, ``node`` for TrainJob pods."""
    names = [c.name for c in pod.spec.containers]
    for name in (KFP_CONTAINER, trainjob.TRAINER_CONTAINER):
        if name in names:
            return name
    return names[0]


def match_run(pods: Sequence[Any], run: str) -> list[Any]:
    """Pods of the run named by its id, a unique prefix of it, or its Argo workflow name.

    Raises:
        click.UsageError: the prefix matches several runs.
    """
    exact = [p for p in pods if run_id(p) == run or labels(p).get(WORKFLOW_LABEL) == run]
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
        if labels(p).get(placement.STEP_LABEL) == step
        and (dataset is None or labels(p).get(placement.DATASET_LABEL) == dataset)
        and (attempt is None or retry_index(p) == attempt)
    ]
    if not candidates:
        steps = sorted({labels(p).get(placement.STEP_LABEL, "?") for p in match_run(pods, run)})
        known = f"; its steps: {', '.join(steps)}" if steps else "; `kubectl asrflow runs` lists the runs"
        raise click.ClickException(f"no pod of run {run!r} step {step!r} matches{known}")
    ordered = sorted(candidates, key=lambda p: (not is_trainjob_pod(p), created(p)), reverse=True)
    return ordered[0], ordered[1:]

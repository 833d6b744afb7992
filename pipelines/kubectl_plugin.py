"""``kubectl asrflow``: the runs on a cluster, their steps, and a step's logs (the click commands).

Installed as the console script ``kubectl-asrflow``, which kubectl runs as ``kubectl asrflow``.
The work is in :mod:`pipelines.kubectl`: reading pods (:mod:`~pipelines.kubectl.pods`),
summing them into runs (:mod:`~pipelines.kubectl.summary`), rendering those
(:mod:`~pipelines.kubectl.report`), finding the cluster as kubectl does
(:mod:`~pipelines.kubectl.kubeconfig`) and asking it (:mod:`~pipelines.kubectl.cluster`, whose
``REQUIRED_RBAC`` the ``asrflow-viewer`` Role grants).

``-n``, ``--context`` and ``--kubeconfig`` go before or after the subcommand; what goes wrong
reaching the cluster is one line on stderr, with the traceback only under ``--debug``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import click

from pipelines import placement
from pipelines.kubectl import cluster as api
from pipelines.kubectl.kubeconfig import DEFAULT_KUBECONFIG, NAMESPACE_ENV, ClusterError, resolve_target
from pipelines.kubectl.pods import choose_pod, match_run, pod_state, run_id
from pipelines.kubectl.report import OUTPUTS, render_runs
from pipelines.kubectl.summary import summarize

__all__ = ["cli", "main"]

MAX_OTHER_PODS = 8  # named on stderr by `logs`


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


def open_cluster(flags: ClusterFlags) -> api.Cluster:
    """The cluster a subcommand's flags name, over those given before the subcommand.

    Raises:
        ClusterError: see :func:`~pipelines.kubectl.kubeconfig.resolve_target` and
            :func:`~pipelines.kubectl.cluster.connect`.
    """
    flags = flags.over(click.get_current_context().find_object(ClusterFlags) or ClusterFlags())
    try:
        target = resolve_target(flags.namespace, flags.kubeconfig, flags.context)
        return api.connect(target, flags.debug)
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
    with api.reporting(cluster):
        pods = api.list_pods(cluster.core, namespace)
        if run_filter:
            pods = match_run(pods, run_filter)
        jobs = api.list_trainjobs(cluster.custom, namespace)
        if run_filter:
            run_ids = {run_id(p) for p in pods} | {run_filter}
            jobs = [
                j for j in jobs if (j["metadata"].get("labels") or {}).get(placement.RUN_LABEL) in run_ids
            ]
        found = summarize(pods, jobs, api.read_progress(cluster.core, pods, namespace) if progress else {})
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
    with api.reporting(cluster):
        pods = api.list_pods(cluster.core, cluster.target.namespace)
        pod = pick_log_pod(pods, run, step, dataset, attempt, pod_name)
        if not follow:
            click.echo(api.read_log(cluster, pod, tail), nl=False)
            return
        for text in api.follow_log(cluster, pod, tail):
            sys.stdout.write(text)
            sys.stdout.flush()


def pick_log_pod(
    pods: Sequence[Any], run: str, step: str, dataset: str | None, attempt: int | None, pod_name: str | None
) -> Any:
    """:func:`~pipelines.kubectl.pods.choose_pod`, or the step's pod named ``pod_name``; names the
    step's other pods on stderr.

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
        names = ", ".join(f"{p.metadata.name} ({pod_state(p)})" for p in others[:MAX_OTHER_PODS])
        more = f" and {len(others) - MAX_OTHER_PODS} more" if len(others) > MAX_OTHER_PODS else ""
        click.echo(f"# {pod.metadata.name} ({pod_state(pod)}); other pods: {names}{more}", err=True)
    return pod


def main() -> None:
    """The ``kubectl-asrflow`` console script; kubectl runs it as ``kubectl asrflow``."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    cli.main(prog_name="kubectl asrflow" if prog.startswith("kubectl-") else prog or "kubectl asrflow")


if __name__ == "__main__":
    main()

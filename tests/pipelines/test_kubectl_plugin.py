"""kubectl asrflow: summaries and choices over pods and TrainJobs built with the real models.

Pods are ``kubernetes.client`` models shaped like the ones KFP v2 (Argo) and Kubeflow
Trainer (JobSet) create; TrainJobs come from ``pipelines.trainjob.build_trainjob``. No cluster:
the command's tests write real kubeconfig files whose server is a closed local port or a tiny
local HTTP server, and the real kubernetes client reads them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from click.testing import CliRunner
from kubernetes import client as k8s

from components.progress import Progress
from pipelines import kubectl_plugin as kp
from pipelines import placement, trainjob
from pipelines.kubectl import cluster as kube_api
from pipelines.kubectl import kubeconfig
from pipelines.kubectl.kubeconfig import NAMESPACE_ENV, Target, resolve_target
from pipelines.kubectl.pods import (
    JOBSET_RESTART_LABEL,
    KFP_CONTAINER,
    NODE_NAME_ANNOTATION,
    WORKFLOW_LABEL,
    choose_pod,
    is_preempted,
    log_container,
    node_pool,
    pod_state,
    retry_index,
    run_id,
    step_name,
    task_key,
)
from pipelines.kubectl.report import OUTPUTS, STEP_HEADER, format_runs, render_runs
from pipelines.kubectl.summary import RunSummary, parse_progress, progress_pods, summarize

T0 = dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(hours=3)
RUN = "3f2a9c1e-0b5d-4c3e-9a51-7d2c1e4b8a10"
OTHER_RUN = "77aa0000-1111-2222-3333-444455556666"
WORKFLOW = "asr-training-x7k2p"


def kfp_pod(
    name: str,
    step: str,
    *,
    run: str = RUN,
    dataset: str = "peoples_speech",
    node: str | None = None,
    phase: str = "Succeeded",
    pool: placement.NodePool = placement.CPU_POOL,
    minutes: int = 0,
    conditions: list[k8s.V1PodCondition] | None = None,
    reason: str | None = None,
    main_state: k8s.V1ContainerState | None = None,
    restarts: int = 0,
) -> k8s.V1Pod:
    """A KFP v2 task pod: Argo's labels and node name, asrflow's labels, the pool's selector."""
    labels = {
        placement.KFP_RUN_ID_LABEL: run,
        WORKFLOW_LABEL: WORKFLOW,
        "pipelines.kubeflow.org/v2_component": "true",
        placement.PART_OF_LABEL: placement.PART_OF,
        placement.STEP_LABEL: step,
        placement.DATASET_LABEL: dataset,
    }
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name,
            namespace=placement.NAMESPACE,
            labels=labels,
            annotations={NODE_NAME_ANNOTATION: node or f"{WORKFLOW}.root.{step}.executor"},
            creation_timestamp=T0 + dt.timedelta(minutes=minutes),
        ),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name="wait"), k8s.V1Container(name=KFP_CONTAINER)],
            node_selector=pool.node_selector,
        ),
        status=k8s.V1PodStatus(
            phase=phase,
            reason=reason,
            conditions=conditions,
            container_statuses=[
                k8s.V1ContainerStatus(
                    name=KFP_CONTAINER,
                    image="img",
                    image_id="",
                    ready=phase == "Running",
                    restart_count=restarts,
                    state=main_state,
                )
            ],
        ),
    )


def shutdown_condition() -> list[k8s.V1PodCondition]:
    """What the kubelet's graceful node shutdown leaves on a pod of a reclaimed spot VM."""
    return [
        k8s.V1PodCondition(
            type="DisruptionTarget",
            status="True",
            reason="TerminationByKubelet",
            message="Pod was terminated in response to imminent node shutdown.",
        )
    ]


def terminated(reason: str, code: int) -> k8s.V1ContainerState:
    return k8s.V1ContainerState(terminated=k8s.V1ContainerStateTerminated(reason=reason, exit_code=code))


def trainjob_pod(name: str, job: str, index: int, *, restart: int = 0, phase: str = "Running") -> k8s.V1Pod:
    """A pod JobSet makes for a TrainJob node: the labels build_trainjob's patch sets, plus JobSet's."""
    labels = {
        placement.PART_OF_LABEL: placement.PART_OF,
        placement.RUN_LABEL: RUN,
        placement.STEP_LABEL: "train",
        placement.DATASET_LABEL: "peoples_speech",
        trainjob.JOBSET_NAME_LABEL: job,
        trainjob.COMPLETION_INDEX_LABEL: str(index),
        JOBSET_RESTART_LABEL: str(restart),
    }
    return k8s.V1Pod(
        metadata=k8s.V1ObjectMeta(
            name=name, labels=labels, creation_timestamp=T0 + dt.timedelta(minutes=90 + restart)
        ),
        spec=k8s.V1PodSpec(
            containers=[k8s.V1Container(name=trainjob.TRAINER_CONTAINER)],
            node_selector=placement.A100_POOL.node_selector,
        ),
        status=k8s.V1PodStatus(phase=phase),
    )


def the_trainjob(state: str | None = None) -> dict[str, Any]:
    job = trainjob.build_trainjob(
        name=trainjob.trainjob_name(RUN),
        namespace=placement.NAMESPACE,
        image="registry.example/train:1",
        train_args=["gs://b/tarred"],
        num_nodes=2,
        gpu="a100",
        run_id=RUN,
        dataset="peoples_speech",
    ).to_dict()
    job["metadata"]["creationTimestamp"] = (T0 + dt.timedelta(minutes=89)).isoformat()
    if state:
        job["status"] = {"conditions": [{"type": state, "status": "True"}]}
    return job


def progress_line(done: int, total: int) -> str:
    """A progress line exactly as components/progress.py logs it, with setup_logging's format."""
    progress = Progress("write-shards utterances", total=total)
    progress.done = done
    record = logging.LogRecord("asrflow", logging.INFO, __file__, 1, progress.line(), None, None)
    return logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s").format(record)


@pytest.fixture
def pods() -> list[k8s.V1Pod]:
    shard = f"{WORKFLOW}.root.for-loop-2.iteration-item({{i}}:{{i}}).write-shard-group.executor"
    return [
        kfp_pod("dl-1", "download", minutes=0),
        kfp_pod("ws-0", "write-shards", node=shard.format(i=0), minutes=10),
        kfp_pod(
            "ws-1a",
            "write-shards",
            node=shard.format(i=1) + "(0)",
            minutes=10,
            phase="Failed",
            main_state=terminated("OOMKilled", 137),
        ),
        kfp_pod("ws-1b", "write-shards", node=shard.format(i=1) + "(1)", minutes=14, phase="Running"),
        kfp_pod(
            "tr-0",
            "train",
            node=f"{WORKFLOW}.root.train.executor(0)",
            pool=placement.V100_POOL,
            minutes=30,
            phase="Failed",
            reason="Terminated",
            conditions=shutdown_condition(),
        ),
        kfp_pod(
            "tr-2",
            "train",
            node=f"{WORKFLOW}.root.train.executor(2)",
            pool=placement.V100_POOL,
            minutes=70,
            phase="Running",
        ),
        kfp_pod("other-dl", "download", run=OTHER_RUN, minutes=-600),
    ]


# --- reading pods ----------------------------------------------------------------------------


def test_run_step_retry_and_task_come_from_labels_and_argo_node_names(pods: list[k8s.V1Pod]) -> None:
    by_name = {p.metadata.name: p for p in pods}
    assert run_id(by_name["tr-2"]) == RUN
    assert retry_index(by_name["tr-2"]) == 2
    assert retry_index(by_name["ws-0"]) == 0
    assert task_key(by_name["ws-1a"]) == task_key(by_name["ws-1b"])
    assert task_key(by_name["ws-0"]) != task_key(by_name["ws-1b"])
    assert node_pool(by_name["tr-2"]) == placement.V100_POOL.name
    pod = trainjob_pod("tj-a", "job", 1, restart=3)
    assert (run_id(pod), step_name(pod), retry_index(pod), task_key(pod)) == (
        RUN,
        "train (TrainJob)",
        3,
        "job/1",
    )


def test_pod_states_name_what_is_wrong() -> None:
    assert pod_state(kfp_pod("a", "train", phase="Failed", conditions=shutdown_condition())) == "Preempted"
    assert pod_state(kfp_pod("b", "train", phase="Failed", reason="NodeShutdown")) == "Preempted"
    assert (
        pod_state(kfp_pod("c", "x", phase="Failed", main_state=terminated("OOMKilled", 137))) == "OOMKilled"
    )
    waiting = k8s.V1PodCondition(type="PodScheduled", status="False", reason="Unschedulable")
    assert pod_state(kfp_pod("d", "x", phase="Pending", conditions=[waiting])) == "Unschedulable"
    no_secret = k8s.V1ContainerState(waiting=k8s.V1ContainerStateWaiting(reason="CreateContainerConfigError"))
    assert pod_state(kfp_pod("e", "x", phase="Pending", main_state=no_secret)) == "CreateContainerConfigError"
    assert pod_state(kfp_pod("f", "x", phase="Running")) == "Running"
    # A pod evicted for memory pressure is the step's own doing, not a preemption.
    assert pod_state(kfp_pod("g", "x", phase="Failed", reason="Evicted")) == "Failed"
    assert not is_preempted(kfp_pod("g", "x", phase="Failed", reason="Evicted"))


# --- progress ----------------------------------------------------------------------------


def test_progress_from_this_projects_progress_lines() -> None:
    log = "\n".join(["starting", progress_line(100, 400), "noise", progress_line(120, 400), "more noise"])
    assert parse_progress(log).startswith("120/400 (30%) ETA ")


def test_progress_from_step_markers_and_tqdm_bars() -> None:
    assert parse_progress("INFO train: step=1200/50000 loss=0.31\n") == "1200/50000 (2%)"
    bar = "Epoch 3:  45%|████▌     | 450/1000 [01:02<01:15,  7.24it/s, v_num=0]"
    assert parse_progress("a\r" + bar + "\n") == "450/1000 (45%)"
    assert parse_progress("downloading: 3/4 (75%) 1.0/s ETA 12s") == "3/4 (75%) ETA 12s"
    assert parse_progress("nothing to see\n") == ""


# --- summaries and their formatting ------------------------------------------------------


def test_summary_of_runs_steps_retries_and_preemptions(pods: list[k8s.V1Pod]) -> None:
    progress = {"ws-1b": parse_progress(progress_line(120, 400)), "tr-2": "1200/50000 (2%)"}
    runs = summarize(pods, [], progress)
    assert [r.run for r in runs] == [RUN, OTHER_RUN]
    run = runs[0]
    assert run.status == "Running" and run.workflow == WORKFLOW
    steps = {s.step: s for s in run.steps}
    assert [s.step for s in run.steps] == ["download", "write-shards", "train"]
    assert steps["download"].status == "Succeeded" and steps["download"].progress == "done"
    ws = steps["write-shards"]
    assert (ws.status, ws.tasks_done, ws.tasks, ws.restarts, ws.preempted) == ("Running", 1, 2, 1, 0)
    assert ws.progress.startswith("120/400 (30%)")
    train = steps["train"]
    assert (train.status, train.pool, train.restarts, train.preempted) == (
        "Running",
        placement.V100_POOL.name,
        2,
        1,
    )
    assert train.pods == ["tr-2", "tr-0"]


def test_a_failed_task_fails_the_step_when_nothing_runs() -> None:
    pods = [
        kfp_pod("a", "write-shards", node="w.root.g(0:0).executor"),
        kfp_pod(
            "b",
            "write-shards",
            node="w.root.g(1:1).executor",
            phase="Failed",
            main_state=terminated("Error", 1),
        ),
    ]
    (run,) = summarize(pods)
    (step,) = run.steps
    assert (step.status, step.tasks_done, step.tasks, step.progress) == ("Error", 1, 2, "")
    assert run.status == "Error"


def test_trainjobs_and_their_pods_join_their_run(pods: list[k8s.V1Pod]) -> None:
    job = the_trainjob()
    name = job["metadata"]["name"]
    tj_pods = [trainjob_pod("tj-0", name, 0), trainjob_pod("tj-1", name, 1, restart=1)]
    runs = summarize(pods + tj_pods, [job])
    run = next(r for r in runs if r.run == RUN)
    (summary,) = run.trainjobs
    assert (summary.name, summary.step, summary.state, summary.nodes) == (name, "train", "Running", 2)
    tj_step = next(s for s in run.steps if s.step == "train (TrainJob)")
    assert (tj_step.tasks, tj_step.restarts, tj_step.pool) == (2, 1, placement.A100_POOL.name)
    done = summarize([], [the_trainjob("Complete")])
    assert done[0].status == "Succeeded" and done[0].trainjobs[0].state == "Complete"


def test_format_runs_reads_like_kubectl(pods: list[k8s.V1Pod]) -> None:
    job = the_trainjob("Failed")
    text = format_runs(summarize(pods, [job], {"tr-2": "1200/50000 (2%)"}), NOW)
    lines = text.splitlines()
    assert lines[0] == f"RUN {RUN}  Running  workflow {WORKFLOW}  started {T0.isoformat()} (3h00m ago)"
    header = lines[1].split()
    assert header == list(STEP_HEADER)
    train = next(line for line in lines if line.split()[0] == "train")
    assert train.split() == [
        "train",
        "peoples_speech",
        "Running",
        placement.V100_POOL.name,
        "0/1",
        "2",
        "1",
        "1200/50000",
        "(2%)",
        "2h30m",
    ]
    # columns line up: every row's STATUS starts where the header's does
    column = lines[1].index("STATUS")
    for line in lines[2:5]:
        assert line[column - 2 : column] == "  " and line[column] != " "
    assert f"  TrainJob {job['metadata']['name']} (step train): Failed, 2 node(s)" in lines
    assert f"RUN {OTHER_RUN}  Succeeded" in text
    assert format_runs([], NOW) == "no asrflow runs found"


# --- choosing a pod for logs -------------------------------------------------------------


def test_logs_picks_the_newest_attempt_or_the_one_asked_for(pods: list[k8s.V1Pod]) -> None:
    pod, others = choose_pod(pods, RUN[:4], "train")
    assert pod.metadata.name == "tr-2" and [p.metadata.name for p in others] == ["tr-0"]
    pod, _ = choose_pod(pods, WORKFLOW, "train", attempt=0)
    assert pod.metadata.name == "tr-0"
    assert log_container(pod) == KFP_CONTAINER
    assert log_container(trainjob_pod("t", "j", 0)) == trainjob.TRAINER_CONTAINER


def test_logs_explains_what_does_not_match(pods: list[k8s.V1Pod]) -> None:
    with pytest.raises(click.ClickException, match="its steps: download, train, write-shards"):
        choose_pod(pods, RUN, "evaluate")
    with pytest.raises(click.ClickException, match="kubectl asrflow runs"):
        choose_pod(pods, "nope", "train")
    twins = [kfp_pod("x", "train", run="abc-1"), kfp_pod("y", "train", run="abc-2")]
    with pytest.raises(click.UsageError, match="ambiguous"):
        choose_pod(twins, "abc", "train")


def test_progress_is_read_from_one_running_pod_per_step(pods: list[k8s.V1Pod]) -> None:
    assert sorted(p.metadata.name for p in progress_pods(pods)) == ["tr-2", "ws-1b"]


# --- the command -------------------------------------------------------------------------


def test_help_explains_the_columns() -> None:
    result = CliRunner().invoke(kp.cli, ["runs", "--help"])
    assert result.exit_code == 0
    for column in ("PREEMPTED", "RESTARTS", "PROGRESS", "step=N/M"):
        assert column in result.output


def test_console_script_and_kubectl_find_the_plugin() -> None:
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "kubectl-asrflow"), "--help"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "Usage: kubectl asrflow" in result.stdout and "logs" in result.stdout
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    via_kubectl = subprocess.run(
        [str(bin_dir / "kubectl"), "asrflow", "logs", "--help"], capture_output=True, text=True, env=env
    )
    assert via_kubectl.returncode == 0, via_kubectl.stderr
    assert "RUN STEP" in via_kubectl.stdout


# --- finding the cluster and the namespace, as kubectl does --------------------------------


@pytest.fixture
def no_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No kubeconfig anywhere and not in a pod: HOME is an empty directory; returns it."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", NAMESPACE_ENV):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A local port that refuses connections for the whole test: bound and never listening, so
    that no other process on the machine can take it meanwhile (a closed one could be)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def write_kubeconfig(path: Path, server: str) -> Path:
    """A kubeconfig as kubectl writes it: context "team" names namespace team-a, "plain" (current) none."""
    cluster = {"name": "gke", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
    contexts = [
        {"name": "team", "context": {"cluster": "gke", "user": "me", "namespace": "team-a"}},
        {"name": "plain", "context": {"cluster": "gke", "user": "me"}},
    ]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": contexts,
        "current-context": "plain",
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_without_a_kubeconfig_the_plugin_says_so_in_one_line(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    env = {"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(home), "KUBERNETES_SERVICE_HOST": None}
    for args in (["runs"], ["logs", RUN, "train"]):
        result = CliRunner().invoke(kp.cli, args, env=env)
        assert result.exit_code != 0
        (line,) = result.output.splitlines()
        assert line.startswith("Error: no kubeconfig: $KUBECONFIG") and str(tmp_path / "missing") in line
        assert "KUBERNETES_SERVICE_HOST" in line and "--kubeconfig" in line
    result = CliRunner().invoke(kp.cli, ["-n", "x", "runs"], env={**env, "KUBECONFIG": None})
    (line,) = result.output.splitlines()
    assert f"$KUBECONFIG is unset and {home / '.kube' / 'config'} does not exist" in line


def test_namespace_is_the_flag_else_the_contexts_else_asrflow(
    no_cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")
    resolve = resolve_target
    assert resolve(kubeconfig=str(config), context="team") == Target("team-a", str(config), "team")
    assert resolve(kubeconfig=str(config), context="plain").namespace == placement.NAMESPACE
    assert resolve(kubeconfig=str(config)).context == "plain"  # the current-context
    assert resolve("mine", str(config), "team").namespace == "mine"
    # $KUBECONFIG is a list; files that do not exist are skipped, as kubectl skips them
    monkeypatch.setenv("KUBECONFIG", os.pathsep.join([str(tmp_path / "gone"), str(config)]))
    assert resolve(context="team") == Target("team-a", str(config), "team")
    monkeypatch.setenv(NAMESPACE_ENV, "from-env")
    assert resolve(context="team").namespace == "from-env"
    assert resolve("flag", context="team").namespace == "flag"
    # ~/.kube/config when $KUBECONFIG is unset
    monkeypatch.delenv("KUBECONFIG")
    monkeypatch.delenv(NAMESPACE_ENV)
    (no_cluster / ".kube").mkdir()
    default = write_kubeconfig(no_cluster / ".kube" / "config", "https://127.0.0.1:1")
    assert resolve(context="team") == Target("team-a", str(default), "team")


def test_in_a_pod_the_namespace_is_the_service_accounts(
    no_cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    namespace_file = tmp_path / "namespace"
    namespace_file.write_text("team-b\n")
    monkeypatch.setattr(kubeconfig, "SERVICE_ACCOUNT_NAMESPACE", str(namespace_file))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert resolve_target() == Target("team-b")
    namespace_file.unlink()
    assert resolve_target().namespace == placement.NAMESPACE


@pytest.mark.parametrize(
    ("args", "context", "namespace"),
    [
        (["--kubeconfig", "K", "--context", "team", "runs"], "team", "team-a"),
        (["runs", "--kubeconfig", "K", "--context", "team"], "team", "team-a"),
        (["--kubeconfig", "K", "runs"], "plain", placement.NAMESPACE),
        (["-n", "before", "--kubeconfig", "K", "runs"], "plain", "before"),
        (
            ["-n", "before", "--context", "plain", "runs", "-n", "after", "--kubeconfig", "K"],
            "plain",
            "after",
        ),
        (["--context", "team", "logs", RUN, "train", "--kubeconfig", "K"], "team", "team-a"),
        (["--kubeconfig", "K", "logs", RUN, "train", "--namespace", "after"], "plain", "after"),
    ],
)
def test_cluster_flags_go_before_or_after_the_subcommand(
    no_cluster: Path, tmp_path: Path, refusing_port: int, args: list[str], context: str, namespace: str
) -> None:
    server = f"https://127.0.0.1:{refusing_port}"
    config = write_kubeconfig(tmp_path / "config", server)
    result = CliRunner().invoke(kp.cli, [str(config) if a == "K" else a for a in args])
    assert result.exit_code == 1
    assert result.output.splitlines() == [
        f"Error: cannot reach the API server at {server} (context {context}, namespace {namespace}): "
        "Connection refused"
    ]


def test_bad_context_and_kubeconfig_are_one_line_errors(no_cluster: Path, tmp_path: Path) -> None:
    config = write_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n")
    cases = {
        f"context 'nope' is not in kubeconfig {config} (its contexts: plain, team)": [
            "--context",
            "nope",
            "--kubeconfig",
            str(config),
        ],
        f"cannot read kubeconfig {tmp_path / 'absent'} (from --kubeconfig): No such file or directory": [
            "--kubeconfig",
            str(tmp_path / "absent"),
        ],
        f"cannot read kubeconfig {tmp_path} (from --kubeconfig): Is a directory": [
            "--kubeconfig",
            str(tmp_path),
        ],
        f"kubeconfig {broken} is not a valid kubeconfig: ": ["--kubeconfig", str(broken)],
    }
    for message, args in cases.items():
        result = CliRunner().invoke(kp.cli, [*args, "runs"])
        assert result.exit_code == 1
        (line,) = result.output.splitlines()
        assert line.startswith(f"Error: {message}"), line


class _Refusing(http.server.BaseHTTPRequestHandler):
    """An API server that answers every request with the Status the one in ``status`` would."""

    status = 403

    def do_GET(self) -> None:
        message = 'pods is forbidden: User "alice@example.com" cannot list resource "pods"'
        body = json.dumps({"kind": "Status", "status": "Failure", "message": message, "code": self.status})
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def refusing_server() -> Iterator[str]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refusing)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_forbidden_names_the_viewer_role_and_unauthorized_the_credentials(
    no_cluster: Path, tmp_path: Path, refusing_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_kubeconfig(tmp_path / "config", refusing_server)
    result = CliRunner().invoke(kp.cli, ["--kubeconfig", str(config), "--context", "team", "runs"])
    assert result.exit_code == 1
    (line,) = result.output.splitlines()
    assert line.startswith(f"Error: the API server at {refusing_server} (context team, namespace team-a)")
    assert "403 Forbidden: pods is forbidden" in line
    assert f"needs the {placement.VIEWER_ROLE} Role in namespace team-a" in line
    assert f"create rolebinding {placement.VIEWER_ROLE}-USER --role {placement.VIEWER_ROLE}" in line
    monkeypatch.setattr(_Refusing, "status", 401)
    result = CliRunner().invoke(kp.cli, ["logs", RUN, "train", "--kubeconfig", str(config)])
    (line,) = result.output.splitlines()
    assert "did not accept your credentials (401 Unauthorized)" in line and "get-credentials" in line


def test_debug_adds_the_traceback(no_cluster: Path, tmp_path: Path, refusing_port: int) -> None:
    config = write_kubeconfig(tmp_path / "config", f"https://127.0.0.1:{refusing_port}")
    result = CliRunner().invoke(kp.cli, ["--debug", "--kubeconfig", str(config), "runs"])
    lines = result.output.splitlines()
    assert result.exit_code == 1 and lines[0] == "Traceback (most recent call last):"
    assert lines[-1].startswith("Error: cannot reach the API server"), result.output
    result = CliRunner().invoke(kp.cli, ["--kubeconfig", str(config), "--context", "nope", "runs", "--debug"])
    assert "Traceback" in result.output and result.output.splitlines()[-1].startswith("Error: context")


# --- -o table|json|yaml ------------------------------------------------------------------


def test_runs_as_json_and_yaml_hold_the_runs_of_the_table(
    pods: list[k8s.V1Pod], no_cluster: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_api, "list_pods", lambda core, namespace: pods)
    monkeypatch.setattr(kube_api, "list_trainjobs", lambda custom, namespace: [the_trainjob("Failed")])
    config = write_kubeconfig(tmp_path / "config", "https://127.0.0.1:1")
    outputs = {}
    for output in OUTPUTS:
        args = ["--kubeconfig", str(config), "runs", "--no-progress", "-o", output]
        result = CliRunner().invoke(kp.cli, args)
        assert result.exit_code == 0, result.output
        outputs[output] = result.output
    as_json, as_yaml = json.loads(outputs["json"]), yaml.safe_load(outputs["yaml"])
    assert as_json == as_yaml
    table_runs = [line.split()[1] for line in outputs["table"].splitlines() if line.startswith("RUN ")]
    assert [run["run"] for run in as_json] == table_runs == [RUN, OTHER_RUN]
    assert list(as_json[0]) == [field.name for field in dataclasses.fields(RunSummary)]
    first_run = outputs["table"].split("\n\n")[0].splitlines()
    steps = [line.split()[0] for line in first_run[2:] if not line.startswith("  TrainJob ")]
    assert [step["step"] for step in as_json[0]["steps"]] == steps == ["download", "write-shards", "train"]
    assert as_json[0]["trainjobs"][0]["state"] == "Failed"
    assert render_runs([], "json", NOW) == "[]" and render_runs([], "yaml", NOW) == "[]"

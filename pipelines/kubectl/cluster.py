"""The API calls of ``kubectl asrflow``, and what went wrong with one, in one line.

It finds work by labels, so it needs no KFP API access, only the ``asrflow-viewer`` Role
(:data:`REQUIRED_RBAC`): pods with ``app.kubernetes.io/part-of=asrflow``, their logs, and
TrainJobs (``trainer.kubeflow.org``) with the same label.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import re
import traceback
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from pipelines import placement, trainjob
from pipelines.kubectl.kubeconfig import GET_CREDENTIALS, ClusterError, Target
from pipelines.kubectl.pods import log_container
from pipelines.kubectl.summary import parse_progress, progress_pods

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
VIEWER_ROLE_MANIFEST = "manifests/base/viewer-role.yaml"
CONNECT_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 60.0  # a list or a log's tail; a followed log has no read timeout
REQUEST_TIMEOUT = (CONNECT_TIMEOUT_S, READ_TIMEOUT_S)
PROGRESS_TAIL_LINES = 200  # of a running pod's log, for its progress
_CONNECTION_PREFIX = re.compile(r"^(?:<[^>]*>|\w+\(host=[^)]*\)): ")  # urllib3's "<…Connection…>: "


@dataclasses.dataclass(frozen=True)
class Cluster:
    """API clients for a :class:`Target`; ``host`` is the API server's URL."""

    target: Target
    host: str
    core: Any
    custom: Any
    debug: bool = False


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
    """asrflow's pods (:data:`SELECTOR`) in ``namespace``."""
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


def read_progress(
    core: Any, pods: Sequence[Any], namespace: str, tail_lines: int = PROGRESS_TAIL_LINES
) -> dict[str, str]:
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


def _log_arguments(pod: Any, tail: int | None) -> dict[str, Any]:
    arguments: dict[str, Any] = {"container": log_container(pod)}
    if tail is not None:
        arguments["tail_lines"] = tail
    return arguments


def read_log(cluster: Cluster, pod: Any, tail: int | None = None) -> str:
    """The log of ``pod``'s own container (:func:`~pipelines.kubectl.pods.log_container`), or
    its last ``tail`` lines."""
    return cluster.core.read_namespaced_pod_log(
        pod.metadata.name,
        cluster.target.namespace,
        _request_timeout=REQUEST_TIMEOUT,
        **_log_arguments(pod, tail),
    )


def follow_log(cluster: Cluster, pod: Any, tail: int | None = None) -> Iterator[str]:
    """The log of ``pod``'s own container as it grows, until the pod ends (no read timeout)."""
    response = cluster.core.read_namespaced_pod_log(
        pod.metadata.name,
        cluster.target.namespace,
        follow=True,
        _preload_content=False,
        _request_timeout=(CONNECT_TIMEOUT_S, None),
        **_log_arguments(pod, tail),
    )
    for chunk in response.stream():
        yield chunk.decode("utf-8", errors="replace")

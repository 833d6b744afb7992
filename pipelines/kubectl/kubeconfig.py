"""Where ``kubectl asrflow`` looks: the kubeconfig, context and namespace, resolved as kubectl does.

``--kubeconfig``, else ``$KUBECONFIG``, else ``~/.kube/config``, else a pod's service account
(:func:`resolve_target`). What cannot be found or read is a one-line :class:`ClusterError`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from typing import Any

import click

from pipelines import placement

NAMESPACE_ENV = "ASRFLOW_NAMESPACE"
DEFAULT_KUBECONFIG = "~/.kube/config"  # kubectl's, when $KUBECONFIG is unset
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"  # the kubelet sets it in every pod
SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
GET_CREDENTIALS = "gcloud container clusters get-credentials CLUSTER --location LOCATION"


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

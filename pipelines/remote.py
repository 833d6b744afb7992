"""Runs and recurring runs on a KFP cluster through ``kfp.Client``.

The pipeline is compiled to a temporary YAML for the chosen GPU pool and sent as a package,
so what runs is exactly what ``asrflow compile`` writes. Runs use the ``asrflow-runner``
service account (Workload Identity for GCS, RBAC for TrainJobs; see ``manifests/``).
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import socket
import tempfile
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipelines.placement import NAMESPACE, RUNNER_SERVICE_ACCOUNT

# Seconds to wait for the KFP API to answer before saying it cannot be reached
# (kfp.Client itself waits forever on a host that accepts and never answers).
REACH_TIMEOUT_S = 20.0
WHAT_TO_CHECK = (
    "check --host/$KFP_HOST and the network (through a port-forward: "
    "`kubectl -n asrflow port-forward svc/ml-pipeline-ui 8080:80` running, --host http://localhost:8080)"
)


class RemoteError(RuntimeError):
    """The KFP API cannot be reached or refused a request; the message says what to check."""


def check_reachable(host: str, timeout: float | None = None) -> None:
    """Raise :class:`RemoteError` unless something answers HTTP at ``host`` within ``timeout``.

    Any HTTP answer counts (a sign-in redirect, 401, 404: kfp.Client reports those); only no
    answer at all (refused, unknown name, timed out) is an error here.
    """
    base = host if host.startswith("http") else f"https://{host}"  # as kfp.Client does
    url = base.rstrip("/") + "/apis/v2beta1/healthz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # kfp.Client ignores proxies too
    wait = REACH_TIMEOUT_S if timeout is None else timeout
    try:
        with opener.open(url, timeout=wait):
            pass
    except urllib.error.HTTPError:
        pass  # it answered
    except (ValueError, http.client.InvalidURL) as err:
        raise RemoteError(f"--host {host!r} is not a valid URL ({err}): give http(s)://HOST[:PORT]") from err
    except http.client.HTTPException as err:
        raise RemoteError(
            f"the KFP API at {host} gave no valid HTTP answer ({type(err).__name__}); {WHAT_TO_CHECK}"
        ) from err
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        if isinstance(reason, (socket.timeout, TimeoutError)):
            reason = f"no answer in {wait:g} s"
        elif reason.__class__.__module__ == "ssl":
            return  # TLS answered; kfp.Client checks certificates its own way
        raise RemoteError(f"cannot reach the KFP API at {host}: {reason}; {WHAT_TO_CHECK}") from err


@contextlib.contextmanager
def api_errors(host: str) -> Iterator[None]:
    """Turn KFP API failures into one-line RemoteError messages that name the host."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError as Urllib3Error

    quiet = logging.getLogger("urllib3.connectionpool")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # no "Retrying (Retry(total=2…" lines before the error
    try:
        yield
    except ApiException as err:
        status = f"{err.status} {err.reason}".strip() if err.status else str(err.reason).splitlines()[0]
        hint = "; sign in or pass a token (KFP auth)" if err.status in (401, 403) else ""
        raise RemoteError(f"the KFP API at {host} answered {status}{hint}") from err
    except Urllib3Error as err:
        reason = getattr(err, "reason", None) or err
        raise RemoteError(f"cannot reach the KFP API at {host}: {reason}; {WHAT_TO_CHECK}") from err
    finally:
        quiet.setLevel(level)


def _client(host: str, namespace: str | None) -> Any:
    import kfp

    check_reachable(host)
    with warnings.catch_warnings():  # "This client only works with KFP v2.0.0-beta.2 and later"
        warnings.simplefilter("ignore", FutureWarning)
        return kfp.Client(host=host, namespace=namespace or NAMESPACE)


def _experiment_id(client: Any, name: str, namespace: str | None) -> str:
    return client.create_experiment(name=name, namespace=namespace).experiment_id


def _compiled(gpu: str, workdir: str) -> str:
    from pipelines.asr_training import compile_pipeline

    return str(compile_pipeline(str(Path(workdir) / f"asrflow-{gpu}.yaml"), gpu=gpu))


def submit_run(
    host: str,
    experiment: str,
    gpu: str,
    arguments: dict[str, Any],
    run_name: str | None = None,
    namespace: str | None = None,
) -> str:
    """Start one run; returns its run id.

    Raises:
        RemoteError: the KFP API cannot be reached or refused the run.
    """
    client = _client(host, namespace)
    with api_errors(host), tempfile.TemporaryDirectory() as workdir:
        result = client.create_run_from_pipeline_package(
            _compiled(gpu, workdir),
            arguments=arguments,
            run_name=run_name or f"asrflow-{time.strftime('%Y%m%d-%H%M%S')}",
            experiment_id=_experiment_id(client, experiment, namespace),
            namespace=namespace,
            service_account=RUNNER_SERVICE_ACCOUNT,
        )
    return result.run_id


def schedule_runs(
    host: str,
    experiment: str,
    gpu: str,
    arguments: dict[str, Any],
    job_name: str,
    cron: str,
    max_concurrency: int = 1,
    catchup: bool = False,
    namespace: str | None = None,
) -> str:
    """Create a recurring run (cron, bounded concurrency, no catch-up by default); returns its id.

    Raises:
        RemoteError: the KFP API cannot be reached or refused the recurring run.
    """
    client = _client(host, namespace)
    with api_errors(host), tempfile.TemporaryDirectory() as workdir:
        recurring = client.create_recurring_run(
            experiment_id=_experiment_id(client, experiment, namespace),
            job_name=job_name,
            cron_expression=cron,
            max_concurrency=max_concurrency,
            no_catchup=not catchup,
            params=arguments,
            pipeline_package_path=_compiled(gpu, workdir),
            service_account=RUNNER_SERVICE_ACCOUNT,
        )
    return recurring.recurring_run_id

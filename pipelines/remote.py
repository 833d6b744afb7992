"""Runs and recurring runs on a KFP cluster through ``kfp.Client``.

The pipeline is compiled to a temporary YAML for the chosen GPU pool and sent as a package,
so what runs is exactly what ``asrflow compile`` writes. Runs use the ``asrflow-runner``
service account (Workload Identity for GCS, RBAC for TrainJobs; see ``manifests/``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.placement import NAMESPACE, RUNNER_SERVICE_ACCOUNT


def _client(host: str, namespace: str | None) -> Any:
    import kfp

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
    """Start one run; returns its run id."""
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as workdir:
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
    """Create a recurring run (cron, bounded concurrency, no catch-up by default); returns its id."""
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as workdir:
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

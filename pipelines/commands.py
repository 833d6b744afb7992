"""The pipeline verbs of the ``asrflow`` CLI: compile, run --local, submit, schedule.

They only forward to :mod:`pipelines.asr_training`, :mod:`pipelines.local_run` and
:mod:`pipelines.remote`.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from pipelines.local_run import RUNNERS

GPU_CHOICES = click.Choice(["v100", "a100"])


def parse_params(pairs: tuple[str, ...]) -> dict[str, object]:
    """``key=value`` pairs to pipeline arguments; values are JSON where they parse, else text."""
    params: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected key=value, got {pair!r}", param_hint="--param")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


@click.command("compile")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="Pipeline YAML to write.")
@click.option(
    "--gpu", type=GPU_CHOICES, default="v100", show_default=True, help="Spot GPU pool for training."
)
@click.option("--gpus", type=int, default=None, help="GPUs per training node (default: the pool's).")
@click.option(
    "--mixture",
    is_flag=True,
    help="The variant that trains on a weighted mixture of sources (parameters train_weight, "
    "extra_train_sets, mix_temperature).",
)
def compile_pipeline(out: str, gpu: str, gpus: int | None, mixture: bool) -> None:
    """Write the pipeline YAML to upload in the KFP UI (Pipelines > Upload pipeline).

    The GPU type fixes training's node pool, accelerator limit and precision (V100:
    16-mixed, A100: bf16-mixed); everything else is a run parameter in the UI. With
    --mixture, train_source is mixed with extra_train_sets, each prepared by its own
    download and write-shards fan-out.
    """
    from pipelines.asr_training import compile_pipeline as compile_yaml

    try:
        path = compile_yaml(out, gpu=gpu, gpus_per_node=gpus, mixture=mixture)
    except ValueError as err:
        raise click.ClickException(str(err)) from None
    click.echo(
        f"wrote {path} (training on spot {gpu}); upload it in the KFP UI or run: asrflow submit {path}"
    )


@click.command("run")
@click.option("--local", "local", is_flag=True, help="Run through kfp.local on this machine (required).")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False),
    default="demo-output",
    show_default=True,
    help="Where data_root and KFP's local pipeline root go.",
)
@click.option("--source", default=None, help="Training data (default: the bundled corpus).")
@click.option("--max-steps", type=int, default=None, help="Training steps (default: the demo's).")
@click.option("--param", "params", multiple=True, help="Any other pipeline argument, key=value.")
@click.option(
    "--runner",
    type=click.Choice(RUNNERS),
    default="subprocess",
    show_default=True,
    help="subprocess: every task in this environment; container: every task in its image, as uid "
    "1000 with a read-only root (podman; build the images first with `make images-local`).",
)
def run(
    local: bool,
    output_dir: str,
    source: str | None,
    max_steps: int | None,
    params: tuple[str, ...],
    runner: str,
) -> None:
    """Run the whole DAG on this machine with kfp.local (tiny model, CPU, bundled corpus).

    Prints where the outputs are and a WER/CER table. For a cluster use `asrflow submit`.
    """
    if not local:
        raise click.UsageError("only --local runs here; use `asrflow submit` to run on a KFP cluster")
    from pipelines.container_run import ContainerRunError
    from pipelines.local_run import print_summary, run_local

    overrides = parse_params(params)
    if source:
        overrides["train_source"] = source
    if max_steps is not None:
        overrides["max_steps"] = max_steps
    try:
        summary = run_local(Path(output_dir), overrides, runner=runner)
    except ContainerRunError as err:
        raise click.ClickException(str(err)) from None
    print_summary(summary)


def _client_options(func):
    func = click.option("--host", envvar="KFP_HOST", required=True, help="KFP API endpoint (or $KFP_HOST).")(
        func
    )
    func = click.option(
        "--namespace", envvar="KFP_NAMESPACE", default=None, help="Kubeflow profile namespace (multi-user)."
    )(func)
    func = click.option("--experiment", default="asrflow", show_default=True, help="KFP experiment.")(func)
    func = click.option("--gpu", type=GPU_CHOICES, default="v100", show_default=True, help="Spot GPU pool.")(
        func
    )
    func = click.option(
        "--param", "params", multiple=True, help="Pipeline argument key=value (JSON values)."
    )(func)
    return func


@click.command("submit")
@_client_options
@click.option("--run-name", default=None, help="Run name (default: asrflow-<time>).")
def submit(
    host: str, namespace: str | None, experiment: str, gpu: str, params: tuple[str, ...], run_name: str | None
) -> None:
    """Start one run of the pipeline on a KFP cluster."""
    from pipelines.remote import submit_run

    run_id = submit_run(host, experiment, gpu, parse_params(params), run_name=run_name, namespace=namespace)
    click.echo(f"started run {run_id}; follow it with: kubectl asrflow runs")


@click.command("schedule")
@_client_options
@click.option(
    "--cron", required=True, help="Cron expression with seconds, e.g. '0 0 3 * * 0' (Sundays 03:00)."
)
@click.option("--name", "job_name", default="asrflow-retrain", show_default=True, help="Recurring run name.")
@click.option("--max-concurrency", type=int, default=1, show_default=True, help="Runs at once.")
@click.option("--catchup/--no-catchup", default=False, show_default=True, help="Run missed intervals.")
@click.option("--champion", default="", help="Model name: promote to models/NAME/champion.json when better.")
def schedule(
    host: str,
    namespace: str | None,
    experiment: str,
    gpu: str,
    params: tuple[str, ...],
    cron: str,
    job_name: str,
    max_concurrency: int,
    catchup: bool,
    champion: str,
) -> None:
    """Schedule recurring retraining; each run evaluates against the champion and promotes a better model."""
    from pipelines.remote import schedule_runs

    arguments = parse_params(params)
    if champion:
        arguments["champion_name"] = champion
    job_id = schedule_runs(
        host,
        experiment,
        gpu,
        arguments,
        job_name=job_name,
        cron=cron,
        max_concurrency=max_concurrency,
        catchup=catchup,
        namespace=namespace,
    )
    click.echo(f"scheduled recurring run {job_id} ({cron})")

"""Run the whole DAG on one machine through ``kfp.local`` (what ``make demo`` does).

The same pipeline function the cluster runs, with arguments that fit a laptop: the bundled
corpus as training data and as eval sets, a handful of shards, and a few minutes of
fine-tuning of the small pretrained model shipped in tests/data/pretrained (made by ``make
pretrained`` on voices the corpus lacks). That model is the demo's first champion, so the
table shows each set's WER before (the champion's) and after (the fine-tuned model's), and
whether the new model was promoted. GKE placement (node selectors, GPUs, tolerations) is
cluster configuration and is ignored here.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BUNDLED_CORPUS = REPO / "tests" / "data" / "peoples_speech"
PRETRAINED_MODEL = REPO / "tests" / "data" / "pretrained" / "small_espeak" / "model.nemo"
"""The small model the demo fine-tunes: made by ``make pretrained`` on voices the corpus lacks."""
DEMO_CHAMPION = "demo"
RUNNERS = ("subprocess", "container")
"""subprocess: every task in this environment (the default); container: every task in its image."""


def bundled_set(name: str, config: str, split: str) -> dict[str, str]:
    return {"name": name, "source": str(BUNDLED_CORPUS), "config": config, "split": split, "revision": ""}


def local_arguments(output_dir: Path) -> dict[str, Any]:
    """Pipeline arguments for the local demo on the bundled corpus."""
    return {
        "data_root": str(output_dir.resolve() / "data"),
        "train_source": str(BUNDLED_CORPUS),
        "train_config": "clean",
        "train_split": "train",
        "revision": "",
        "validation_set": bundled_set("dev", "validation", "validation"),
        "eval_sets": [bundled_set("test", "test", "test")],  # the validation set is scored too
        "num_shards": 4,
        "shard_groups": 2,
        "num_buckets": 4,
        "model_config": "finetune_small",
        "init_from": str(PRETRAINED_MODEL),
        "max_steps": 40,
        "checkpoint_every": 20,
        "train_overrides": ["trainer.limit_train_batches=20", "trainer.val_check_interval=20"],
        "champion_name": DEMO_CHAMPION,
    }


def seed_champion(arguments: dict[str, Any]) -> str | None:
    """Make the model the run starts from the champion, when there is none yet.

    The champion record names the model and no figures, so evaluation measures it on the same
    sets as the new model. Returns the record's URI when written.
    """
    from components import layout, storage

    if not arguments.get("champion_name") or not arguments.get("init_from"):
        return None
    uri = layout.champion_uri(arguments["data_root"], arguments["champion_name"])
    if storage.exists(uri):
        return None
    record = {
        "model": arguments["init_from"],
        "sets": {},
        "seeded_by": "asrflow run --local: the model fine-tuned",
    }
    storage.write_text(uri, json.dumps(record, sort_keys=True, indent=2) + "\n")
    return uri


class StepTimer:
    """Adds up how long each task's own process ran, to set against the run's wall time."""

    def __init__(self, runner: str = "subprocess") -> None:
        self.seconds: list[float] = []
        self.runner = runner

    def __enter__(self) -> StepTimer:
        if self.runner == "container":
            from kfp.local.docker_task_handler import DockerTaskHandler as handler
        else:
            from kfp.local.subprocess_task_handler import SubprocessTaskHandler as handler
        self._handler, self._original = handler, handler.run
        timer = self

        def timed_run(task_handler: Any) -> Any:
            started = time.perf_counter()
            try:
                return timer._original(task_handler)
            finally:
                timer.seconds.append(time.perf_counter() - started)

        handler.run = timed_run
        return self

    def __exit__(self, *exc: object) -> None:
        self._handler.run = self._original


def local_sources(arguments: dict[str, Any]) -> list[str]:
    """The local directories or files the run reads its data from (train, validation, eval sets)."""
    sources = [arguments["train_source"], arguments["validation_set"]["source"]]
    sources += [spec["source"] for spec in arguments["eval_sets"]]
    sources += [spec["source"] for spec in arguments.get("extra_train_sets", [])]
    sources += [arguments["init_from"]] if arguments.get("init_from") else []
    return sorted({source for source in sources if "://" not in source and Path(source).exists()})


@contextlib.contextmanager
def kfp_runner(runner: str, output_dir: Path, arguments: dict[str, Any]) -> Iterator[Any]:
    """The kfp.local runner: this environment's processes, or each task in its image (podman)."""
    from kfp import local

    if runner == "subprocess":
        yield local.SubprocessRunner(use_venv=False)
        return
    if runner != "container":
        raise ValueError(f"unknown runner {runner!r}: choose one of {', '.join(RUNNERS)}")
    from components import images
    from pipelines import container_run

    data_root = Path(arguments["data_root"])
    container_run.writable_by_task_user(output_dir, data_root, output_dir / "kfp")
    container_run.hand_over_to_task_user(data_root)
    with container_run.container_runner(
        str(data_root), local_sources(arguments), [images.DATA_IMAGE, images.TRAIN_IMAGE]
    ) as docker_runner:
        yield docker_runner


def run_local(
    output_dir: Path, overrides: dict[str, Any] | None = None, runner: str = "subprocess"
) -> dict[str, Any]:
    """Run the pipeline with kfp.local; returns a summary (paths, eval card, timings).

    Args:
        output_dir: where data_root and KFP's pipeline root go.
        overrides: pipeline arguments that replace :func:`local_arguments`' ones; with
            ``extra_train_sets`` the mixture variant of the pipeline runs.
        runner: ``subprocess`` (each task in this environment) or ``container`` (each task
            in its image, through podman: see :mod:`pipelines.container_run`).
    """
    from kfp import local

    from pipelines.asr_training import build_pipeline

    output_dir = output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    arguments = {**local_arguments(output_dir), **(overrides or {})}
    seed_champion(arguments)
    started = time.perf_counter()
    print_before = builtins.print
    try:
        with kfp_runner(runner, output_dir, arguments) as kfp_local_runner:
            local.init(runner=kfp_local_runner, pipeline_root=str(output_dir / "kfp"), raise_on_error=True)
            with StepTimer(runner) as timer:
                pipeline = build_pipeline(local=True, mixture=bool(arguments.get("extra_train_sets")))
                result = pipeline(**arguments)
    finally:
        # kfp.local indents task output by swapping builtins.print; parallel tasks can leave
        # its indenting version in place, which would shift our table.
        builtins.print = print_before
    wall_s = time.perf_counter() - started
    eval_card = json.loads(Path(result.output.path).read_text())
    return {
        "output_dir": str(output_dir),
        "runner": runner,
        "data_root": arguments["data_root"],
        "eval": eval_card,
        "wall_s": wall_s,
        "steps_s": sum(timer.seconds),
        "num_tasks": len(timer.seconds),
    }


def wer_table(eval_card: dict[str, Any]) -> str:
    """A plain-text WER/CER table, one row per eval set; the champion's figures beside the new
    model's when it was compared with one."""
    from tabulate import tabulate

    previous = (eval_card.get("champion") or {}).get("previous_sets") or {}
    headers = ["set", "utterances"]
    headers += ["champion WER", "champion CER", "new WER", "new CER"] if previous else ["WER", "CER"]
    rows = []
    for name, figures in sorted(eval_card["sets"].items()):
        row = [name, figures["num_utterances"]]
        if previous:
            before = previous.get(name, {})
            row += [_percent(before.get("wer")), _percent(before.get("cer"))]
        rows.append(row + [_percent(figures["wer"]), _percent(figures["cer"])])
    return tabulate(
        rows,
        headers=headers,
        tablefmt="simple",
        colalign=("left",) + ("right",) * (len(headers) - 1),
        disable_numparse=True,
    )


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def print_summary(summary: dict[str, Any]) -> None:
    print()
    print(f"outputs:   {summary['output_dir']}")
    print(f"data_root: {summary['data_root']}  (datasets/, runs/, models/)")
    print(f"model:     {summary['eval'].get('model', '')}")
    print(f"report:    {summary['eval'].get('report', '')}  (worst utterances per set)")
    champion = summary["eval"].get("champion") or {}
    if champion:
        verdict = "promoted to champion" if champion.get("promoted") else "not promoted"
        print(f"champion:  {verdict} ({champion.get('reason', '')})")
    where = "containers" if summary.get("runner") == "container" else "processes"
    print(
        f"wall time: {summary['wall_s']:.0f} s for {summary['num_tasks']} tasks "
        f"(their own {where}: {summary['steps_s']:.0f} s)"
    )
    print()
    print(wer_table(summary["eval"]))

"""Two runs of the compiled DAG on unchanged data, under KFP 2.17's cache rules.

:class:`tests.pipelines.kfp_backend.CacheReplay` decides every task as the KFP 2.17.0
driver does (cache key: input values and input artifact ids; a hit reuses the cached
execution's outputs and artifacts). The second run must reuse every data step after the
download, fan-out included, and train with the very bins the first run estimated.
"""

from __future__ import annotations

import copy
from collections import Counter

import pytest

from tests.pipelines.kfp_backend import CacheReplay

ARGUMENTS = {"data_root": "gs://bucket/asrflow", "shard_groups": 32}
FAN_OUT = ["plan-shard-groups", "write-shard-group", "merge-shards", "estimate-buckets"]


def decided(executions) -> dict[str, Counter]:
    """Per task: how many executions ran and how many were cache hits."""
    counts: dict[str, Counter] = {}
    for execution in executions:
        counts.setdefault(execution.task, Counter())["cached" if execution.cached else "ran"] += 1
    return counts


def train_of(executions):
    (train,) = [e for e in executions if e.task in ("train", "launch-trainjob")]
    return train


def two_runs(spec: dict) -> tuple[list, list]:
    replay = CacheReplay(spec)
    return replay.run(ARGUMENTS, run_id="run-1"), replay.run(ARGUMENTS, run_id="run-2")


def test_a_rerun_on_unchanged_data_reuses_every_data_step(compiled) -> None:
    _, c = compiled
    first, second = two_runs(c.spec)
    before, after = decided(first), decided(second)
    for task in ["resolve-revision", "download", *FAN_OUT]:
        assert before[task]["ran"] >= 1, task
    assert before["write-shard-group"]["ran"] == 3  # the stand-in plan has 3 groups
    for task in ["download", *FAN_OUT]:
        assert after[task] == Counter(cached=before[task]["ran"]), task
    assert after["resolve-revision"] == Counter(ran=1)  # the one step that asks upstream
    assert after["train"] == Counter(ran=1)  # never cached: it resumes from checkpoints


def test_the_rerun_trains_with_the_first_runs_bins(compiled) -> None:
    _, c = compiled
    first, second = two_runs(c.spec)
    bins = [e for e in first if e.task == "estimate-buckets"][0].parameters["Output"]
    assert bins
    assert train_of(first).inputs["bucket_bins"] == bins
    assert train_of(second).inputs["bucket_bins"] == bins
    assert train_of(second).inputs["tarred_dir"] == train_of(first).inputs["tarred_dir"]


def test_multi_node_training_gets_the_bins_too(compiled) -> None:
    _, c = compiled
    replay = CacheReplay(c.spec)
    runs = [replay.run({**ARGUMENTS, "num_nodes": 2}, run_id=f"run-{i}") for i in (1, 2)]
    trains = [train_of(run) for run in runs]
    assert [t.task for t in trains] == ["launch-trainjob", "launch-trainjob"]
    assert trains[0].inputs["bucket_bins"] == trains[1].inputs["bucket_bins"] != []


def test_new_data_upstream_misses_the_cache_all_the_way_down(compiled) -> None:
    _, c = compiled
    replay = CacheReplay(c.spec)
    replay.run(ARGUMENTS, run_id="run-1")
    second = replay.run({**ARGUMENTS, "revision": "a-new-commit"}, run_id="run-2")
    counts = decided(second)
    for task in ["download", *FAN_OUT]:
        assert counts[task]["cached"] == 0, task


def test_the_replay_catches_an_uncached_download(compiled) -> None:
    """The DAG as it was: download uncached, so its card artifact is new on every run, the
    fan-out misses (its key holds the artifact id) and the bins came from a file."""
    _, c = compiled
    spec = copy.deepcopy(c.spec)
    spec["root"]["dag"]["tasks"]["download"]["cachingOptions"] = {}
    _, second = two_runs(spec)
    counts = decided(second)
    assert counts["write-shard-group"] == Counter(ran=3)
    assert counts["merge-shards"] == Counter(ran=1)


@pytest.mark.parametrize("task", ["resolve-revision", "train", "evaluate", "prepare-eval-set"])
def test_steps_that_must_run_every_time_are_uncached(compiled, task: str) -> None:
    _, c = compiled
    assert not c.tasks[task].get("cachingOptions", {}).get("enableCache")

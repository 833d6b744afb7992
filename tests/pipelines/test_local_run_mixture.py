"""The mixture variant of the DAG end to end through ``kfp.local``: the bundled train split mixed
3:1 with a second source (the bundled test split), each downloaded and sharded by its own
fan-out, bins over the mixture, and a train card that accounts for each source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from pipelines.local_run import bundled_set, run_local

STEPS = 6


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("mixture")
    extra = {**bundled_set("extra", "test", "test"), "weight": 1.0}
    del extra["name"]
    return run_local(
        out,
        {
            "max_steps": STEPS,
            "checkpoint_every": 3,
            "num_buckets": 3,
            "train_weight": 3.0,
            "extra_train_sets": [extra],
        },
    )


def test_each_source_is_prepared_under_data_root_and_trained_on(summary: dict) -> None:
    root = Path(summary["data_root"])
    (main,) = root.glob("datasets/peoples_speech/clean/train/*/tarred/*")
    (extra,) = root.glob("datasets/peoples_speech/test/test/*/tarred/*")
    for tarred in (main, extra):
        assert (tarred / "_SUCCESS").exists() and list(tarred.glob("audio_*.tar"))
    # the mixture's bins belong to no one source: its metadata.yaml keeps none
    assert "buckets" not in yaml.safe_load((main / "metadata.yaml").read_text())
    (card_path,) = root.glob("runs/*/card.json")
    card = json.loads(card_path.read_text())
    assert card["steps"] == STEPS and card["mix_temperature"] == 1.0
    assert [(s["dataset"], s["weight"], s["share"]) for s in card["mixture"]] == [
        (str(main), 3.0, 0.75),
        (str(extra), 1.0, 0.25),
    ]
    assert all(s["utterances_seen"] > 0 and s["hours_seen"] > 0 for s in card["mixture"])
    assert sum(s["hours_seen"] for s in card["mixture"]) == pytest.approx(card["hours_seen"], abs=1e-3)


def test_the_bins_are_estimated_over_the_mixture_and_reach_training(summary: dict) -> None:
    kfp_root = Path(summary["output_dir"]) / "kfp"
    (executor_output,) = kfp_root.glob("*/estimate-buckets/executor_output.json")
    bins = json.loads(executor_output.read_text())["parameterValues"]["Output"]
    (card_file,) = kfp_root.glob("*/estimate-buckets/card")
    card = json.loads(card_file.read_text())
    assert [s["weight"] for s in card["mixture"]] == [3.0, 1.0] and card["metadata"] is None
    assert card["bucket_duration_bins"] == bins and len(bins) == 2
    assert set(summary["eval"]["sets"]) == {"dev", "test"}

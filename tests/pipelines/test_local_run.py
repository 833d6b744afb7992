"""The whole DAG end to end through ``kfp.local`` on the bundled corpus (what ``make demo`` runs:
fine-tuning the shipped pretrained model, which is the first champion), with fewer steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.local_run import PRETRAINED_MODEL, print_summary, run_local, wer_table

STEPS = 6


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("demo")
    return run_local(out, {"max_steps": STEPS, "checkpoint_every": 3, "num_buckets": 3})


def test_every_step_leaves_its_data_under_data_root(summary: dict) -> None:
    root = Path(summary["data_root"])
    (raw,) = root.glob("datasets/peoples_speech/clean/train/*/raw")
    assert (raw / "_SUCCESS").exists()
    (tarred,) = raw.parent.glob("tarred/*")
    assert sorted(p.name for p in tarred.glob("audio_*.tar")) == [f"audio_{i}.tar" for i in range(4)]
    metadata = (tarred / "metadata.yaml").read_text()
    assert "bucket_duration_bins" in metadata
    assert (tarred / "_SUCCESS").exists()
    (run,) = root.glob("runs/*")
    assert (run / "model.nemo").is_file() and (run / "_SUCCESS").exists()
    train_card = json.loads((run / "card.json").read_text())
    assert train_card["steps"] == STEPS
    assert train_card["precision"] == "32"  # the hardware's, not the V100 pool's 16-mixed


def test_evaluation_scores_both_bundled_sets(summary: dict) -> None:
    sets = summary["eval"]["sets"]
    assert set(sets) == {"dev", "test"}
    for figures in sets.values():
        assert figures["num_utterances"] == 60
        assert 0.0 <= figures["cer"] <= figures["wer"] or figures["wer"] >= 1.0
        assert figures["hits"] + figures["substitutions"] + figures["deletions"] > 0
    assert summary["eval"]["model"].endswith("model.nemo")


def test_the_demo_fine_tunes_the_shipped_model_and_compares_with_it(summary: dict) -> None:
    """The pretrained model is the first champion: it is measured on the same sets, its WER
    goes beside the fine-tuned model's, and the better of the two is in service after."""
    data_root = Path(summary["data_root"])
    decision = summary["eval"]["champion"]
    assert decision["previous_model"] == str(PRETRAINED_MODEL)
    assert decision["champion_source"] == "re-evaluated"
    assert set(decision["previous_sets"]) == {"dev", "test"}
    # a model that learnt something, unlike a fresh one (100% WER)
    assert all(0 < figures["wer"] < 0.9 for figures in decision["previous_sets"].values())
    champion = json.loads((data_root / "models" / "demo" / "champion.json").read_text())
    expected = summary["eval"]["model"] if decision["promoted"] else str(PRETRAINED_MODEL)
    assert champion["model"] == expected
    (train_card,) = data_root.glob("runs/*/card.json")
    card = json.loads(train_card.read_text())
    assert card["model_class"] == "EncDecCTCModel" and card["config"] == "finetune_small"
    assert card["steps"] == STEPS


def test_metrics_reach_the_kfp_metrics_artifact(summary: dict) -> None:
    kfp_root = Path(summary["output_dir"]) / "kfp"
    (executor_output,) = kfp_root.glob("*/evaluate/executor_output.json")
    (metrics,) = json.loads(executor_output.read_text())["artifacts"]["metrics"]["artifacts"]
    logged = metrics["metadata"]  # Metrics.log_metric keeps its figures in the artifact's metadata
    assert {"dev_wer", "dev_cer", "test_wer", "test_cer", "mean_wer"} <= set(logged)
    assert logged["dev_wer"] == pytest.approx(summary["eval"]["sets"]["dev"]["wer"])


def test_summary_prints_a_wer_table(summary: dict, capsys) -> None:
    print_summary(summary)
    printed = capsys.readouterr().out
    assert wer_table(summary["eval"]) in printed
    assert "champion WER" in printed and "new WER" in printed and "CER" in printed
    assert "promoted" in printed
    assert summary["data_root"] in printed
    assert summary["num_tasks"] >= 10
    assert 0 < summary["steps_s"]


def test_run_without_local_says_to_submit() -> None:
    result = CliRunner().invoke(main, ["run"])
    assert result.exit_code != 0
    assert "asrflow submit" in result.output


def test_ui_artifacts_histogram_curves_and_report(summary: dict) -> None:
    kfp_root = Path(summary["output_dir"]) / "kfp"
    (histogram,) = kfp_root.glob("*/estimate-buckets/histogram")
    (curves,) = kfp_root.glob("*/train/curves")
    (report,) = kfp_root.glob("*/evaluate/report")
    assert "data:image/png;base64," in histogram.read_text()
    assert "data:image/png;base64," in curves.read_text()
    text = report.read_text()
    for name in ("dev", "test"):
        assert re.search(rf"^\| {name} +\| +60 \|", text, re.M), text
    assert "## Worst utterances: dev" in text

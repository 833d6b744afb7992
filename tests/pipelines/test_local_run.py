"""The whole DAG end to end through ``kfp.local`` on the bundled corpus (what ``make demo`` runs),
with fewer training steps."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipelines.cli import main
from pipelines.local_run import print_summary, run_local, wer_table

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


def test_a_model_above_the_promotion_ceiling_is_not_promoted(summary: dict) -> None:
    """Six CPU steps make a model that gets nearly every word wrong: even with no champion
    yet it must not go into service (max_wer, 0.9 by default)."""
    champion = Path(summary["data_root"]) / "models" / "demo" / "champion.json"
    decision = summary["eval"]["champion"]
    assert summary["eval"]["mean_wer"] > decision["max_wer"] == 0.9
    assert decision["promoted"] is False and "promotion ceiling" in decision["reason"]
    assert not champion.exists()


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
    assert "set" in printed and "WER" in printed and "CER" in printed
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

"""estimate-buckets: Lhotse bins in NeMo's form, metadata.yaml update, padding efficiency, CLI."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from components import layout
from components.buckets import bins as bucket_bins
from components.buckets import core
from components.buckets.histogram import HISTOGRAM_NAME
from components.manifest import RejectThresholdExceeded

OTHER_METADATA = {
    "version": 0,
    "num_samples_per_shard": 500,
    "is_concatenated_manifest": False,
    "dataset_config": {"num_shards": 4, "shuffle": True, "num_buckets": None, "bucket_duration_bins": None},
    "history": [],
    "asrflow": {"step": "write-shards", "utterances": 2000, "rejects_by_reason": {"too_long": 3}},
}


def spread_durations(count: int = 2000, seed: int = 0) -> list[float]:
    """Log-uniform between 0.5 and 20 s: many short utterances, a long tail."""
    rng = np.random.default_rng(seed)
    return [round(float(d), 3) for d in np.exp(rng.uniform(math.log(0.5), math.log(20.0), count))]


def make_tarred(root: Path, durations: list[float], bad_lines: tuple[str, ...] = ()) -> Path:
    """A tarred dataset's manifest and metadata (estimate-buckets reads nothing else)."""
    root.mkdir(parents=True, exist_ok=True)
    lines = [
        json.dumps(
            {"audio_filepath": f"utt{i}.flac", "duration": d, "text": "hello there", "shard_id": i % 4}
        )
        for i, d in enumerate(durations)
    ]
    lines[1:1] = bad_lines
    (root / layout.TARRED_MANIFEST_NAME).write_text("\n".join(lines) + "\n")
    (root / layout.METADATA_NAME).write_text(yaml.safe_dump(OTHER_METADATA, sort_keys=False))
    return root


def test_bins_are_lhotse_estimate_in_nemo_form() -> None:
    from lhotse.dataset.sampling.dynamic_bucketing import estimate_duration_buckets

    durations = spread_durations()
    bins = bucket_bins.estimate_bins(durations, 8)
    # NeMo's train_ds.bucket_duration_bins: K-1 ascending boundaries for num_buckets=K
    assert len(bins) == 7
    assert all(a < b for a, b in zip(bins, bins[1:], strict=False))
    assert min(durations) < bins[0] and bins[-1] < max(durations)

    class Length:
        def __init__(self, duration: float) -> None:
            self.duration = duration

    expected = estimate_duration_buckets([Length(d) for d in durations], num_buckets=8)
    assert bins == [round(float(b), 5) for b in expected]
    # each bucket holds about the same hours
    edges = [0.0, *bins, math.inf]
    totals = [sum(d for d in durations if lo <= d < hi) for lo, hi in zip(edges, edges[1:], strict=False)]
    assert max(totals) < 1.5 * min(totals)


def test_bins_of_repeated_durations_are_strictly_increasing() -> None:
    bins = bucket_bins.estimate_bins([2.0] * 50 + [3.0] * 50 + [9.0] * 5, 10)
    assert bins == sorted(set(bins)) and len(bins) < 9


@pytest.mark.parametrize(
    ("count", "buckets", "message"),
    [(100, 1, "at least 2"), (5, 6, "at least as many utterances")],
)
def test_bad_bucket_counts_say_why(count: int, buckets: int, message: str) -> None:
    with pytest.raises(core.BucketError, match=message):
        bucket_bins.estimate_bins([1.0 + i for i in range(count)], buckets)


def test_bucketed_batches_pad_less_than_unbucketed() -> None:
    durations = spread_durations()
    bins = bucket_bins.estimate_bins(durations, 8)
    figures = bucket_bins.padding_efficiency(durations, bins, batch_duration=120.0, seed=0)
    bucketed, unbucketed = figures["bucketed"], figures["unbucketed"]
    assert (
        bucketed["real_frames"] == unbucketed["real_frames"] == sum(bucket_bins.frames(d) for d in durations)
    )
    assert bucketed["efficiency"] > unbucketed["efficiency"] + 0.2
    assert figures["ratio"] == pytest.approx(bucketed["efficiency"] / unbucketed["efficiency"], abs=1e-3)
    assert figures == bucket_bins.padding_efficiency(durations, bins, batch_duration=120.0, seed=0)


def test_estimate_updates_metadata_and_keeps_other_keys(tmp_path: Path) -> None:
    tarred = make_tarred(tmp_path / "tarred", spread_durations())
    card = core.estimate_buckets(str(tarred), num_buckets=6, batch_duration=120.0)
    metadata = yaml.safe_load((tarred / layout.METADATA_NAME).read_text())
    for key in ("version", "num_samples_per_shard", "is_concatenated_manifest", "history", "asrflow"):
        assert metadata[key] == OTHER_METADATA[key], key
    assert metadata["dataset_config"]["num_shards"] == 4 and metadata["dataset_config"]["shuffle"] is True
    assert metadata["dataset_config"]["num_buckets"] == 6 == card["num_buckets"]
    assert metadata["dataset_config"]["bucket_duration_bins"] == card["bucket_duration_bins"]
    assert metadata["buckets"]["bucket_duration_bins"] == card["bucket_duration_bins"]
    assert metadata["buckets"]["max_duration"] == card["max_duration"] == max(spread_durations())
    assert list(tarred.glob(".tmp-*")) == []
    out = tarred / "buckets"
    assert json.loads((out / "card.json").read_text()) == card
    assert (out / "_SUCCESS").exists()
    png = (out / HISTOGRAM_NAME).read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    # the bins as the training step reads them
    from components.train.data import TarredDataset

    dataset = TarredDataset(str(tarred), 4, "", "", metadata)
    assert dataset.bucket_duration_bins() == card["bucket_duration_bins"]


def test_same_input_same_outputs(tmp_path: Path) -> None:
    first = make_tarred(tmp_path / "a", spread_durations(500))
    second = make_tarred(tmp_path / "b", spread_durations(500))
    core.estimate_buckets(str(first), num_buckets=5, out_dir=str(tmp_path / "out_a"), batch_duration=60.0)
    core.estimate_buckets(str(second), num_buckets=5, out_dir=str(tmp_path / "out_b"), batch_duration=60.0)
    for name in (HISTOGRAM_NAME,):
        assert (tmp_path / "out_a" / name).read_bytes() == (tmp_path / "out_b" / name).read_bytes()
    card_a = json.loads((tmp_path / "out_a" / "card.json").read_text())
    card_b = json.loads((tmp_path / "out_b" / "card.json").read_text())
    assert card_a["padding_efficiency"] == card_b["padding_efficiency"]
    assert card_a["bucket_duration_bins"] == card_b["bucket_duration_bins"]


def test_max_duration_leaves_out_longer_utterances(tmp_path: Path) -> None:
    durations = spread_durations()
    tarred = make_tarred(tmp_path / "tarred", durations)
    card = core.estimate_buckets(str(tarred), num_buckets=4, max_duration=10.0, write_metadata=False)
    assert card["max_duration"] == 10.0
    assert card["filtered"] == sum(d > 10.0 for d in durations) > 0
    assert card["utterances"] == sum(d <= 10.0 for d in durations)
    assert card["bucket_duration_bins"][-1] < 10.0
    assert yaml.safe_load((tarred / layout.METADATA_NAME).read_text()) == OTHER_METADATA


def test_bad_manifest_lines_are_counted_then_fail_above_threshold(tmp_path: Path) -> None:
    bad = ("{not json", json.dumps({"audio_filepath": "x.flac", "duration": -1.0, "text": "a"}))
    tarred = make_tarred(tmp_path / "ok", spread_durations(300), bad_lines=bad)
    card = core.estimate_buckets(str(tarred), num_buckets=4)
    assert card["rejects_by_reason"] == {"bad_duration": 1, "bad_manifest_line": 1}
    rejects = (tarred / "buckets" / "rejects.jsonl").read_text()
    assert f"{tarred / layout.TARRED_MANIFEST_NAME}:2" in rejects
    tarred = make_tarred(tmp_path / "bad", spread_durations(50), bad_lines=bad)
    with pytest.raises(RejectThresholdExceeded, match="bad_duration: 1, bad_manifest_line: 1"):
        core.estimate_buckets(str(tarred), num_buckets=4)


def test_sharded_manifests_are_read_when_there_is_no_full_manifest(tmp_path: Path) -> None:
    durations = spread_durations(400)
    tarred = make_tarred(tmp_path / "tarred", durations)
    full = (tarred / layout.TARRED_MANIFEST_NAME).read_text().splitlines()
    (tarred / layout.TARRED_MANIFEST_NAME).unlink()
    (tarred / layout.SHARDED_MANIFESTS_DIR).mkdir()
    for shard in range(4):
        lines = [line for line in full if json.loads(line)["shard_id"] == shard]
        (tarred / layout.SHARDED_MANIFESTS_DIR / f"manifest_{shard}.json").write_text("\n".join(lines) + "\n")
    card = core.estimate_buckets(str(tarred), num_buckets=4)
    assert card["utterances"] == 400
    assert card["manifests"] == [
        str(tarred / layout.SHARDED_MANIFESTS_DIR / f"manifest_{i}.json") for i in range(4)
    ]


def test_missing_manifest_names_the_directory(tmp_path: Path) -> None:
    with pytest.raises(core.BucketError, match=f"no {layout.TARRED_MANIFEST_NAME}.*{tmp_path}"):
        core.estimate_buckets(str(tmp_path), num_buckets=4)


def test_on_write_shards_output_of_the_bundled_corpus(bundled_shards: Path, tmp_path: Path) -> None:
    """The real write-shards output: manifest and metadata only are copied (no audio read)."""
    tarred = tmp_path / "tarred"
    tarred.mkdir()
    for name in (layout.TARRED_MANIFEST_NAME, layout.METADATA_NAME, "card.json", "_SUCCESS"):
        shutil.copy(bundled_shards / name, tarred / name)
    before = yaml.safe_load((tarred / layout.METADATA_NAME).read_text())
    # a write-shards card as input: the step works on the directory the card names
    # (rewritten to the copy, so that the session's shared shards stay untouched)
    shards_card = json.loads((tarred / "card.json").read_text())
    assert shards_card["out_dir"] == str(bundled_shards)
    (tarred / "card.json").write_text(json.dumps({**shards_card, "out_dir": str(tarred)}))
    card = core.estimate_buckets(str(tarred / "card.json"), 4)
    assert card["tarred_dir"] == str(tarred)
    card = core.estimate_buckets(str(tarred), num_buckets=4, batch_duration=60.0)
    assert card["utterances"] == before["asrflow"]["utterances"] == 300
    assert len(card["bucket_duration_bins"]) == 3
    after = yaml.safe_load((tarred / layout.METADATA_NAME).read_text())
    assert {k: v for k, v in after.items() if k not in ("dataset_config", "buckets")} == {
        k: v for k, v in before.items() if k != "dataset_config"
    }
    assert after["dataset_config"]["bucket_duration_bins"] == card["bucket_duration_bins"]
    assert (
        card["padding_efficiency"]["bucketed"]["efficiency"]
        > card["padding_efficiency"]["unbucketed"]["efficiency"]
    )


def test_cli_help_explains_the_options() -> None:
    from pipelines.cli import main

    result = CliRunner().invoke(main, ["estimate-buckets", "--help"])
    assert result.exit_code == 0, result.output
    for text in (
        "TARRED_DIR",
        "--num-buckets",
        "--max-duration",
        "--batch-duration",
        "--out",
        "metadata.yaml",
    ):
        assert text in result.output


def test_cli_prints_figures_then_the_card_last(tmp_path: Path) -> None:
    from pipelines.cli import main

    tarred = make_tarred(tmp_path / "tarred", spread_durations(600))
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main,
        ["estimate-buckets", str(tarred), "--num-buckets", "5", "--batch-duration", "90", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    card = json.loads(lines[-1])
    assert card == json.loads((out / "card.json").read_text())
    assert card["num_buckets"] == 5 and len(card["bucket_duration_bins"]) == 4
    assert any(line.startswith("padding efficiency   bucketed:") for line in lines)
    assert any(line.startswith("padding efficiency unbucketed:") for line in lines)
    assert any(line.startswith("padding efficiency ratio") for line in lines)
    assert (out / HISTOGRAM_NAME).exists()


def test_cli_rejects_one_bucket(tmp_path: Path) -> None:
    from pipelines.cli import main

    result = CliRunner().invoke(main, ["estimate-buckets", str(tmp_path), "--num-buckets", "1"])
    assert result.exit_code == 2 and "--num-buckets" in result.output

"""Weighted dataset mixing: ``asrflow train TARRED_DIR --weight W --mix DIR=WEIGHT …``.

The sources reach NeMo as a Lhotse ``input_cfg`` of weighted ``nemo_tarred`` entries, whose
weights are shares of *utterances* (each next utterance is drawn from source ``k`` with
probability ``w_k / sum(w)``); estimate-buckets takes the same options and estimates the bins
over the mixture; the train card records what was seen of each source.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from components import mixture
from components.buckets import core as buckets
from components.buckets.bins import estimate_bins
from components.buckets.durations import mixture_durations
from components.train import config, data
from components.train.errors import TrainError
from components.train.settings import TrainSettings
from pipelines.cli import main
from tests.components.test_buckets import make_tarred, spread_durations
from tests.components.test_train import explain, last_json_line, run_asrflow, train_args

BASE = {"tarred_dir": "a", "val_manifest": "v.json", "run_dir": "r"}


@pytest.fixture(scope="module")
def second_shards(bundled_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tarred dataset: the bundled test split (60 utterances) in 2 shards."""
    from components.shard.core import write_shards

    out = tmp_path_factory.mktemp("second_shards") / "tarred"
    write_shards(str(bundled_corpus / "test"), str(out), workers=1, num_shards=2, seed=0)
    return out


# --- the option and its parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"mix": ["b=abc"]}, "--mix 'b=abc': the weight 'abc' is not a number"),
        ({"mix": ["b=-1"]}, "--mix 'b=-1': the weight must be a finite number above 0, got -1.0"),
        ({"mix": ["b=0"]}, "--mix 'b=0': the weight must be a finite number above 0, got 0.0"),
        ({"mix": ["b=nan"]}, "--mix 'b=nan': the weight must be a finite number above 0"),
        ({"mix": ["=3"]}, "--mix '=3': no directory before '='"),
        ({"mix": ["b"]}, "--mix 'b': give DIR=WEIGHT"),
        ({"mix": ["a=1"]}, "--mix: a is in the mixture twice"),
        ({"mix": ["b=1"], "weight": -2.0}, "--weight: the weight must be a finite number above 0, got -2.0"),
        ({"mix_temperature": -1.0}, "--mix-temperature must be 0 or more, got -1.0"),
    ],
)
def test_bad_mixtures_name_the_item(change: dict, message: str):
    with pytest.raises(TrainError, match=re.escape(message)):
        TrainSettings(**BASE, **change)


def test_bad_items_on_the_command_line_name_the_item():
    runner = CliRunner()
    args = ["train", "a", "--val", "v", "--run-dir", "r"]
    result = runner.invoke(main, [*args, "--mix", "b=2", "--mix", "c=abc"])
    assert result.exit_code == 1 and "Error: --mix 'c=abc': the weight 'abc' is not a number" in result.output
    result = runner.invoke(main, [*args, "--mix", "b=-0.5"])
    assert "Error: --mix 'b=-0.5': the weight must be a finite number above 0, got -0.5" in result.output
    result = runner.invoke(main, ["estimate-buckets", "a", "--mix", "=1"])
    assert result.exit_code == 1 and "--mix '=1': no directory before '='" in result.output


def test_a_missing_source_directory_is_named(bundled_shards: Path, tmp_path: Path):
    missing = tmp_path / "nowhere"
    with pytest.raises(data.DataError, match=re.escape(f"{missing}: not a NeMo tarred dataset")):
        data.open_mixture([(str(bundled_shards), 3.0), (str(missing), 1.0)], str(tmp_path / "work"))
    result = CliRunner().invoke(main, ["estimate-buckets", str(bundled_shards), "--mix", f"{missing}=1"])
    assert result.exit_code == 1 and str(missing) in result.output


def test_the_mixture_argv_parses_back_and_sources_keep_their_order():
    from components.train.cli import parse_train_args

    settings = TrainSettings(**BASE, weight=3, mix=["gs://b/x=1", "c,d=0.5"], mix_temperature=0.5)
    argv = settings.to_argv()
    assert argv.count("--mix") == 2 and "c,d=0.5" in argv  # one item an option: a comma is no separator
    assert parse_train_args(argv) == settings
    assert [(s.uri, s.weight) for s in settings.sources()] == [("a", 3.0), ("gs://b/x", 1.0), ("c,d", 0.5)]
    assert TrainSettings(**BASE).to_argv() == TrainSettings(**BASE, weight=1.0, mix=[]).to_argv()


def test_shares_are_nemos_temperature_reweighting():
    from nemo.collections.common.data.lhotse.cutset import temperature_reweighting

    for weights, temperature in (([3, 1], 1.0), ([3, 1, 0.5], 0.5), ([10, 1], 0.0), ([2, 5], 2.0)):
        assert mixture.probabilities(weights, temperature) == pytest.approx(
            temperature_reweighting(weights, temperature=temperature)
        )


# --- what NeMo is given -------------------------------------------------------------------------


def test_the_mixture_is_nemos_input_cfg_and_its_cuts_carry_their_source(
    bundled_shards: Path, second_shards: Path, tmp_path: Path
):
    """The config NeMo reads: weighted, tagged nemo_tarred entries; NeMo's own reader mixes them
    3:1 in utterances, each cut tagged with its source."""
    from nemo.collections.common.data.lhotse.cutset import read_cutset_from_config

    mixed = data.open_mixture([(str(bundled_shards), 3.0), (str(second_shards), 1.0)], str(tmp_path))
    assert mixed.num_shards == 6 and mixed.shard_ids == tuple(range(6))
    assert mixed.tar_uri(5) == str(second_shards / "audio_1.tar")
    cfg = config.load_config("tiny")
    config.configure_data(cfg, mixed, "val.json", seed=7)
    train_ds = cfg.model.train_ds
    assert train_ds.manifest_filepath is None and train_ds.tarred_audio_filepaths is None
    assert train_ds.use_bucketing is False  # no bins for the mixture given: one source's are not its
    entries = [dict(e) for e in train_ds.input_cfg]
    assert [(e["type"], e["weight"], dict(e["tags"])) for e in entries] == [
        ("nemo_tarred", 3.0, {data.SOURCE_TAG: 0}),
        ("nemo_tarred", 1.0, {data.SOURCE_TAG: 1}),
    ]
    assert entries[1]["tarred_audio_filepaths"] == str(second_shards / "audio__OP_0..1_CL_.tar")
    cuts, is_tarred = read_cutset_from_config(train_ds)
    sources = [cut.custom[data.SOURCE_TAG] for cut, _ in zip(cuts, range(2000), strict=False)]
    assert is_tarred and set(sources) == {0, 1}
    assert sources.count(0) / len(sources) == pytest.approx(0.75, abs=0.04)


# --- bins over the mixture ---------------------------------------------------------------------


def test_mixture_durations_weigh_each_source_by_its_share_of_utterances():
    short, long = [1.0, 2.0, 3.0], [10.0, 11.0]
    # weights proportional to the sizes: the sources' durations, as they are
    assert sorted(mixture_durations([short, long], mixture.probabilities([3, 2]))) == sorted(short + long)
    # twice the share per utterance for the short source: each short one twice
    twice = mixture_durations([short, long], mixture.probabilities([6, 2]))
    assert sorted(twice) == sorted(short * 2 + long)
    # a light share of a big source: evenly spaced ranks of it
    picked = mixture_durations([list(range(100)), [500.0]], [0.5, 0.5])
    assert sorted(picked) == [*range(100), *([500.0] * 100)]


def test_bins_over_the_mixture_are_the_weighted_durations_bins(tmp_path: Path):
    short = spread_durations(400, seed=1)
    short = [round(d / 4, 3) for d in short]  # 0.125 .. 5 s
    long = [round(d + 5, 3) for d in spread_durations(200, seed=2)]  # 5.5 .. 25 s
    a, b = make_tarred(tmp_path / "a", short), make_tarred(tmp_path / "b", long)
    alone = buckets.estimate_buckets(str(a), num_buckets=5, write_metadata=False)["bucket_duration_bins"]
    even = buckets.estimate_buckets(str(a), num_buckets=5, mix=[f"{b}=200"], weight=400)
    assert even["bucket_duration_bins"] == estimate_bins(short + long, 5)  # the union, as it is
    assert even["metadata"] is None and even["out_dir"].startswith(str(a / "buckets" / "mix-"))
    assert [s["share"] for s in even["mixture"]] == pytest.approx([2 / 3, 1 / 3])
    heavy_long = buckets.estimate_buckets(str(a), num_buckets=5, mix=[f"{b}=2"], weight=1)
    assert heavy_long["bucket_duration_bins"] == estimate_bins(short + long * 4, 5)
    assert even["bucket_duration_bins"] != alone
    assert all(
        x > y for x, y in zip(heavy_long["bucket_duration_bins"], even["bucket_duration_bins"], strict=True)
    )
    # the temperature flattens the shares: 0 makes the sources equal, the same as 1:1
    flat = buckets.estimate_buckets(str(a), num_buckets=5, mix=[f"{b}=9"], mix_temperature=0.0)
    equal = buckets.estimate_buckets(str(a), num_buckets=5, mix=[f"{b}=1"])
    assert flat["bucket_duration_bins"] == equal["bucket_duration_bins"]
    assert flat["out_dir"] != equal["out_dir"]  # another mixture, another key
    assert yaml.safe_load((a / "metadata.yaml").read_text()).get("buckets") is None  # no source's bins


# --- a real training run on two datasets -------------------------------------------------------

MIX_STEPS = 20


def test_a_run_on_two_datasets_sees_them_in_the_weights_proportions(
    bundled_shards: Path, second_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    """Weights 3:1 are shares of utterances: 75% / 25% of those seen (within 5 points over ~450
    drawn, 3.5 binomial standard deviations), and of the hours seen by the sources' mean durations."""
    run_dir = tmp_path / "run"
    result = run_asrflow(
        *train_args(bundled_shards, bundled_eval_manifest, run_dir),
        "--weight",
        "3",
        "--mix",
        f"{second_shards}=1",
        "--max-steps",
        str(MIX_STEPS),
        "--bucket-bins",
        "2.5,3.5,4.5",
        "model.train_ds.batch_duration=120",
        f"trainer.limit_train_batches={MIX_STEPS}",
        f"trainer.val_check_interval={MIX_STEPS}",
    )
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert card["steps"] == MIX_STEPS and card["mix_temperature"] == 1.0
    first, second = card["mixture"]
    assert (first["dataset"], first["weight"], first["share"]) == (str(bundled_shards), 3.0, 0.75)
    assert (second["dataset"], second["weight"], second["share"]) == (str(second_shards), 1.0, 0.25)
    seen = first["utterances_seen"] + second["utterances_seen"]
    assert seen > 300
    assert first["utterances_seen_share"] == pytest.approx(0.75, abs=0.05)
    mean = [_mean_duration(d) for d in (bundled_shards, second_shards)]
    expected_hours_share = 0.75 * mean[0] / (0.75 * mean[0] + 0.25 * mean[1])
    assert first["hours_seen_share"] == pytest.approx(expected_hours_share, abs=0.05)
    assert first["hours_seen"] + second["hours_seen"] == pytest.approx(card["hours_seen"], abs=1e-3)
    assert "mixture: 75.0% of the utterances from" in result.stderr
    assert "bucketing into 4 buckets from the config" in result.stderr
    print(json.dumps(card["mixture"], indent=1))


def _mean_duration(tarred: Path) -> float:
    lines = (tarred / "tarred_audio_manifest.json").read_text().splitlines()
    return sum(json.loads(line)["duration"] for line in lines) / len(lines)

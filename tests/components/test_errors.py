"""Clear errors, not tracebacks, from the steps' commands (issue 12, item 4).

Each mistake goes through the real ``asrflow`` group (click's CliRunner): one ``Error:`` line
that names the thing and what to do, a non-zero exit, and with ``asrflow --debug`` the
original exception (its traceback) instead. The override checks are unit-tested too,
against every override the code, the tests and the benchmarks pass today.
"""

from __future__ import annotations

import re
import socket
import tarfile
import traceback
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from components.download.errors import DownloadError
from components.evaluate.core import EvaluateError
from components.train import config as train_config
from components.train.overrides import ConfigError
from pipelines.cli import main

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d ")


def one_error_line(result: Result) -> str:
    """The single ``Error:`` line of a failed command (log lines aside); no traceback."""
    assert result.exit_code not in (0, None), result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: "), result.output
    return lines[0]


def debug_traceback(result: Result, error: type[BaseException]) -> str:
    """With --debug the original exception escapes click: its formatted traceback."""
    assert result.exit_code != 0
    assert isinstance(result.exception, error), result.output
    text = "".join(traceback.format_exception(*result.exc_info))
    assert text.startswith("Traceback (most recent call last)")
    return text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- train: overrides ----------------------------------------------------------------------


def train_argv(tmp_path: Path, *overrides: str) -> list[str]:
    return [
        "train",
        str(tmp_path / "tarred"),
        "--val",
        str(tmp_path / "val.json"),
        "--config",
        "tiny",
        "--run-dir",
        str(tmp_path / "run"),
        *overrides,
    ]


def test_train_override_of_the_wrong_type(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, train_argv(tmp_path, "model.optim.lr=abc"))
    line = one_error_line(result)
    assert result.exit_code == 1
    assert "model.optim.lr=abc" in line and "a number" in line and "0.5" in line
    assert not (tmp_path / "run").exists()

    result = CliRunner().invoke(main, ["--debug", *train_argv(tmp_path, "model.optim.lr=abc")])
    assert "components/train/overrides.py" in debug_traceback(result, ConfigError)


def test_train_override_of_a_key_that_does_not_exist(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, train_argv(tmp_path, "trainer.max_step=10"))
    line = one_error_line(result)
    assert "trainer.max_step=10" in line and "no key trainer.max_step" in line
    assert "did you mean trainer.max_steps?" in line and "+trainer.max_step=10" in line

    result = CliRunner().invoke(main, ["--debug", *train_argv(tmp_path, "trainer.max_step=10")])
    debug_traceback(result, ConfigError)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.optim.lrr=1", "did you mean model.optim.lr?"),
        ("modle.optim.lr=1", "has no key modle (did you mean model.optim.lr?)"),
        ("model.optim.lr.x=1", "has a value at model.optim.lr, not a section"),
        ("model.optim.betas.5=0.8", "model.optim.betas is a list of 2, with no item 5"),
        (
            "model.optim.sched.warmup_ratio.x=1",
            "has model.optim.sched.warmup_ratio: null; to fill it, write +",
        ),
        ("+model.nothing.x=1", "has no section model.nothing"),
        ("model.train_ds.use_bucketing=1", "takes true or false, not 1"),
        ("trainer.max_steps=ten", "takes a number, not 'ten'"),
        ("model.labels=abc", "takes a list"),
        ("model.optim=3", "takes a section"),
        ("trainer.precision=16-mixed", "asrflow sets trainer.precision itself; use --precision"),
        ("trainer.devices=2", "use --devices"),
        ("trainer.max_epochs=3", "training runs to trainer.max_steps"),
        ("a..b=1", "is not a dotted key"),
    ],
)
def test_bad_overrides_are_named(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        train_config.load_config("tiny", [override])
    assert str(err.value).startswith(f"override {override}: ")
    assert message in str(err.value) and "\n" not in str(err.value)


# Every override the code, the tests, the benchmarks and the docs pass today.
OVERRIDES_IN_USE = [
    "trainer.max_steps=20000",
    "model.optim.lr=1.5",
    "model.optim.lr=0.25",
    "model.train_ds.batch_duration=900",
    "model.train_ds.bucket_duration_bins=[1.25,2.5,5.0]",
    "model.train_ds.num_workers=0",
    "model.train_ds.use_bucketing=false",
    "model.validation_ds.num_workers=0",
    "model.encoder.n_layers=1",
    "model.encoder.d_model=32",
    "model.encoder.n_heads=2",
    "model.encoder.subsampling_conv_channels=32",
    "model.encoder.conv_kernel_size=9",
    "trainer.limit_train_batches=30",
    "trainer.val_check_interval=30",
    "asrflow.log_every=1",
    "asrflow.seed=7",
]


@pytest.mark.parametrize("config", train_config.config_names())
def test_the_overrides_in_use_still_apply(config: str) -> None:
    cfg = train_config.load_config(config, OVERRIDES_IN_USE)
    assert cfg.trainer.max_steps == 20000 and cfg.model.train_ds.bucket_duration_bins == [1.25, 2.5, 5.0]
    assert cfg.model.train_ds.use_bucketing is False and cfg.asrflow.seed == 7


def test_what_overrides_may_add_and_replace() -> None:
    cfg = train_config.load_config(
        "tiny",
        [
            "+model.train_ds.max_tps=3.5",  # + adds a key, as in Hydra
            "++model.train_ds.quadratic_duration=15",
            "trainer.fast_dev_run=true",  # a Lightning Trainer argument the config omits
            "trainer.val_check_interval=0.5",  # a number for a number: Lightning's fraction
            "model.spec_augment=null",  # null turns a section off
            "model.optim.lr=${model.encoder.d_model}",  # interpolations go anywhere
            "model.optim.lr=1e-3",
            "model.train_ds.shard_seed=0",  # any single value for a string
            "model.encoder.d_model=64",
            "model.optim.betas.0=0.8",  # an item of a list
        ],
    )
    assert cfg.model.train_ds.max_tps == 3.5 and cfg.model.train_ds.quadratic_duration == 15
    assert cfg.trainer.fast_dev_run is True and cfg.trainer.val_check_interval == 0.5
    assert cfg.model.spec_augment is None and cfg.model.optim.lr == 1e-3
    assert cfg.model.optim.sched.d_model == 64 and cfg.model.train_ds.shard_seed == 0
    assert list(cfg.model.optim.betas) == [0.8, 0.98]


def test_a_users_yaml_takes_the_keys_asrflow_passes(tmp_path: Path) -> None:
    """A YAML without an asrflow section still takes the seed and bins the pipeline passes."""
    yaml = tmp_path / "mine.yaml"
    yaml.write_text("model:\n  train_ds:\n    batch_duration: 100\ntrainer:\n  max_steps: 10\n")
    cfg = train_config.load_config(
        str(yaml), ["asrflow.seed=3", "model.train_ds.bucket_duration_bins=[1.0,2.0]"]
    )
    assert cfg.asrflow.seed == 3 and list(cfg.model.train_ds.bucket_duration_bins) == [1.0, 2.0]
    with pytest.raises(
        ConfigError, match=rf"config {re.escape(str(yaml))} has no key model.train_ds.batch_duraton"
    ):
        train_config.load_config(str(yaml), ["model.train_ds.batch_duraton=5"])


# --- evaluate: a file that is not a .nemo --------------------------------------------------


def test_evaluate_on_a_file_that_is_not_a_nemo(tmp_path: Path) -> None:
    text = tmp_path / "model.nemo"
    text.write_text("not a model\n")
    plain_tar = tmp_path / "weights.nemo"
    (tmp_path / "weights.ckpt").write_bytes(b"\0" * 10)
    with tarfile.open(plain_tar, "w") as tar:
        tar.add(tmp_path / "weights.ckpt", arcname="model_weights.ckpt")
    manifest = tmp_path / "set.json"  # never read: the model is checked first
    for model, why in ((text, "not a tar file"), (plain_tar, "no model_config.yaml in it")):
        argv = ["evaluate", str(model), str(manifest), "--out", str(tmp_path / "out")]
        line = one_error_line(CliRunner().invoke(main, argv))
        assert f"{model} is not a .nemo archive ({why})" in line
        assert "asrflow train" in line  # what a .nemo is and where one comes from
        debug_traceback(CliRunner().invoke(main, ["--debug", *argv]), EvaluateError)
    assert not (tmp_path / "out").exists()


# --- download: the hub does not answer -----------------------------------------------------


def test_download_when_the_hub_is_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    argv = [
        "download",
        "hf://datasets/MLCommons/peoples_speech",
        "--config",
        "clean",
        "--out",
        str(tmp_path / "o"),
    ]
    line = one_error_line(CliRunner().invoke(main, argv))
    assert f"cannot reach the Hugging Face hub at {endpoint}" in line
    assert "dataset MLCommons/peoples_speech" in line
    assert "HF_ENDPOINT" in line and "HF_TOKEN" in line

    text = debug_traceback(CliRunner().invoke(main, ["--debug", *argv]), DownloadError)
    assert "Connect" in text  # the HTTP client's own error, as the cause

"""asrflow train / train-tokenizer: real NeMo training of the tiny config on the bundled shards.

Every training run is a real ``asrflow`` process (CPU, DDP over gloo where asked), because
what matters here is process behaviour: exit codes, SIGTERM, resume after a restart,
torchrun. The uninterrupted run is made once per module and shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from components import manifest, storage
from components.train import checkpoints, config, data, hardware, model
from components.train.errors import TrainError
from components.train.settings import TrainSettings, kfp_default, kfp_type
from components.train.tokenizer import train_tokenizer

ASRFLOW = str(Path(sys.executable).with_name("asrflow"))
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
MAX_STEPS = 12  # tiny.yaml
EVERY = 4
RUN_TIMEOUT_S = 240


def asrflow_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def run_asrflow(*args: str, timeout: float = RUN_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ASRFLOW, *args], capture_output=True, text=True, timeout=timeout, env=asrflow_env(), check=False
    )


def train_args(shards: Path, val: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        "train",
        str(shards),
        "--val",
        str(val),
        "--config",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--checkpoint-every",
        str(EVERY),
        *extra,
    ]


def last_json_line(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def explain(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stderr (tail) ---\n{result.stderr[-6000:]}"


def gcs_validation_set(bundled_eval_manifest: Path, uri: str, count: int = 4) -> str:
    """The first ``count`` utterances of the eval manifest on gs://, audio paths relative."""
    entries = manifest.read_manifest(str(bundled_eval_manifest))[:count]
    relative = []
    for entry in entries:
        audio = Path(entry["audio_filepath"])
        audio = audio if audio.is_absolute() else bundled_eval_manifest.parent / audio
        storage.upload_file(audio, storage.join(uri, "audio", audio.name))
        relative.append({**entry, "audio_filepath": f"audio/{audio.name}"})
    manifest.write_manifest(storage.join(uri, "manifest.json"), relative)
    return storage.join(uri, "manifest.json")


@pytest.fixture(scope="module")
def trained_run(bundled_shards: Path, bundled_eval_manifest: Path, tmp_path_factory: pytest.TempPathFactory):
    """One uninterrupted tiny run to MAX_STEPS: (run_dir, card, stderr)."""
    run_dir = tmp_path_factory.mktemp("train") / "run"
    result = run_asrflow(*train_args(bundled_shards, bundled_eval_manifest, run_dir))
    assert result.returncode == 0, explain(result)
    return run_dir, last_json_line(result.stdout), result.stderr


# --- configs and small pieces ---------------------------------------------------------------


def test_shipped_configs_open_with_their_command_and_load():
    assert {"conformer_ctc_bpe", "conformer_ctc_char", "small", "tiny", *FINE_TUNING_CONFIGS} <= set(
        config.config_names()
    )
    for name in config.config_names():
        text = (config.CONF_DIR / f"{name}.yaml").read_text()
        assert text.startswith("# asrflow "), name
        commands = [line for line in text.splitlines()[:4] if line.startswith("# asrflow ")]
        assert any(f"--config {name} " in line for line in commands), name
        cfg = config.load_config(name)
        assert cfg.model.train_ds.use_lhotse and cfg.trainer.use_distributed_sampler is False
        assert cfg.trainer.max_steps > 0 and cfg.trainer.limit_train_batches > 0
        assert config.BASE_KEY not in cfg and config.REPLACE_KEY not in str(cfg)


FINE_TUNING_CONFIGS = ("finetune_rnnt_bpe", "finetune_ctc_bpe", "finetune_hybrid_tdt_ctc_bpe")


def test_fine_tuning_recipes_name_a_pretrained_model_and_a_gentle_schedule():
    """Each recipe opens with the command that fine-tunes a pretrained model of its kind, and
    sets a peak rate below its base's with a short warm-up and few steps (100-1,000 utterances)."""
    for name in FINE_TUNING_CONFIGS:
        command = (config.CONF_DIR / f"{name}.yaml").read_text().splitlines()[0]
        assert re.search(rf"--config {name} --init-from nvidia/\S+ ", command), name
        cfg, base = config.load_config(name), config.load_config(name.replace("finetune_", "fastconformer_"))
        assert (
            cfg.model.optim.sched.name == "CosineAnnealing"
            and cfg.model.optim.lr <= 1e-4 < base.model.optim.lr
        )
        assert cfg.model.optim.sched.warmup_steps <= cfg.trainer.max_steps // 10
        assert cfg.trainer.max_steps <= 1000 and cfg.asrflow.checkpoint_every <= cfg.trainer.max_steps // 5


# sha256 (first 16 hex digits) of each shipped config as it loaded before the configs became a
# base plus deltas (issue 13; the small transducers: before their size became a base of its
# own), with asrflow.init_encoder_from (null) added since:
# json.dumps(OmegaConf.to_container(cfg), sort_keys=True). The composition changed no config;
# a deliberate change to a config updates its line here.
COMPOSED_CONFIGS = {
    "conformer_ctc_bpe": "0021ce02a60b8597",
    "conformer_ctc_char": "419eb9fc4d588ec3",
    "small": "8efc59e007f056be",
    "tiny": "4ccc198b907c742e",
    "small_rnnt_bpe": "c7f9c161c735599f",  # since: prediction-network dropout 0.3 (the hybrid keeps 0.1)
    "small_hybrid_rnnt_ctc_bpe": "4a0a1b733e93ab58",
}


def test_composed_configs_are_the_configs_they_replace():
    from omegaconf import OmegaConf

    for name, digest in COMPOSED_CONFIGS.items():
        tree = OmegaConf.to_container(config.load_config(name), resolve=False)
        assert hashlib.sha256(json.dumps(tree, sort_keys=True).encode()).hexdigest()[:16] == digest, name


def test_a_delta_merges_into_its_base_and_may_replace_a_section(tmp_path: Path):
    small = config.load_config("small")
    assert dict(small.model.optim.sched) == {"name": "CosineAnnealing", "warmup_steps": 50, "min_lr": 1e-5}
    assert small.model.encoder.d_model == 144 and small.model.encoder.n_layers == 6
    assert list(small.model.labels) == list(config.load_config("conformer_ctc_char").model.labels)
    mine = tmp_path / "mine.yaml"
    mine.write_text("_base_: tiny\ntrainer:\n  max_steps: 3\n")
    cfg = config.load_config(str(mine))
    assert cfg.trainer.max_steps == 3 and cfg.model.encoder.d_model == 48
    mine.write_text("_base_: [tiny, small]\ntrainer:\n  max_steps: 3\n")  # merged in order
    cfg = config.load_config(str(mine))
    assert cfg.trainer.max_steps == 3 and cfg.model.encoder.d_model == 144 and cfg.name == "small"
    mine.write_text("_base_: nope\n")
    with pytest.raises(TrainError, match="_base_ 'nope' is not a config under"):
        config.load_config(str(mine))
    mine.write_text("_base_: [tiny, nope]\n")
    with pytest.raises(TrainError, match="_base_ 'nope' is not a config under"):
        config.load_config(str(mine))
    with pytest.raises(TrainError, match="unknown config 'base/conformer_ctc'"):
        config.load_config("base/conformer_ctc")  # a base is not a config to run


def test_every_config_file_is_package_data():
    """The images install the package: every YAML under conf/ must be matched by its package-data."""
    import tomllib

    repo = Path(__file__).resolve().parents[2]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    shipped = patterns["components.train"]
    for path in config.CONF_DIR.rglob("*.yaml"):
        relative = path.relative_to(config.CONF_DIR.parent)
        assert any(relative.match(pattern) for pattern in shipped), f"{relative} is not in {shipped}"


def test_char_vocabulary_is_what_normalisation_can_produce():
    cfg = config.load_config("conformer_ctc_char")
    labels = list(cfg.model.labels)
    assert len(labels) == len(set(labels))
    produced = set(
        manifest.normalize_text("The Quick, brown FOX's 2nd-jump: 0123456789 abcdefghijklmnopqrstuvwxyz!")
    )
    assert produced <= set(labels)
    assert set(labels) == set("abcdefghijklmnopqrstuvwxyz0123456789' ")


def test_the_char_recipe_is_the_27m_conformer():
    cfg = config.load_config("conformer_ctc_char")
    enc = cfg.model.encoder
    assert (enc.d_model, enc.n_layers, enc.n_heads, enc.subsampling_factor) == (256, 16, 8, 4)
    assert cfg.model.preprocessor.features == 80 and cfg.model.optim.sched.name == "NoamAnnealing"
    built = model.build_model(cfg)
    assert 26e6 < sum(p.numel() for p in built.parameters()) < 29e6


def test_overrides_and_bad_configs():
    cfg = config.load_config("tiny", ["trainer.max_steps=7", "model.optim.lr=0.25"])
    assert cfg.trainer.max_steps == 7 and cfg.model.optim.lr == 0.25
    with pytest.raises(TrainError, match="unknown config"):
        config.load_config("no-such-config")
    with pytest.raises(TrainError, match="key=value"):
        config.load_config("tiny", ["trainer.max_steps"])


def test_hardware_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    found = hardware.resolve_hardware()
    assert (found.devices, found.num_nodes, found.world_size) == (1, 2, 2)
    assert found.precision == "32"  # no GPU here
    assert hardware.resolve_hardware(devices=2, num_nodes=1, precision="bf16-mixed").precision == "bf16-mixed"
    assert hardware.resolve_hardware(precision="16-mixed").precision == "32"  # a V100 pool's setting on CPU
    monkeypatch.delenv("LOCAL_WORLD_SIZE")
    monkeypatch.delenv("WORLD_SIZE")
    assert hardware.resolve_hardware().world_size == 1


def test_data_seed_changes_with_the_resume_step():
    assert data.data_seed(1234, 0) == data.data_seed(1234, 0)
    seeds = {data.data_seed(1234, step) for step in (0, 4, 8, 12)}
    assert len(seeds) == 4


def test_tarred_dataset_spec_and_bins(bundled_shards: Path, tmp_path: Path):
    dataset = data.open_tarred_dataset(str(bundled_shards), str(tmp_path))
    assert dataset.num_shards == 4
    assert dataset.tarred_audio_filepaths == str(bundled_shards / "audio__OP_0..3_CL_.tar")
    assert dataset.manifest_filepath == str(
        bundled_shards / "sharded_manifests" / "manifest__OP_0..3_CL_.json"
    )
    assert dataset.hours() and dataset.hours() > 0
    copy = tmp_path / "copy"
    shutil.copytree(bundled_shards, copy)
    metadata = (
        (copy / "metadata.yaml")
        .read_text()
        .replace("bucket_duration_bins: null", "bucket_duration_bins: [2.0, 3.5]")
    )
    (copy / "metadata.yaml").write_text(metadata)
    assert data.open_tarred_dataset(str(copy), str(tmp_path)).bucket_duration_bins() == [2.0, 3.5]
    (copy / "audio_2.tar").unlink()
    with pytest.raises(data.DataError, match="shard ids must be 0..2"):
        data.open_tarred_dataset(str(copy), str(tmp_path))


def test_validation_manifest_relative_paths_and_text(bundled_eval_manifest: Path, tmp_path: Path):
    src = manifest.read_manifest(str(bundled_eval_manifest))
    rel_dir = tmp_path / "set"
    shutil.copytree(bundled_eval_manifest.parent, rel_dir)
    entries = []
    for entry in src[:3]:
        path = Path(entry["audio_filepath"])
        rel = path.relative_to(bundled_eval_manifest.parent) if path.is_absolute() else path
        entries.append({**entry, "audio_filepath": str(rel), "text": entry["text"].upper() + "!"})
    manifest.write_manifest(str(rel_dir / "rel.json"), entries)
    local, count, hours = data.prepare_validation_manifest(str(rel_dir / "rel.json"), str(tmp_path / "work"))
    resolved = manifest.read_manifest(local)
    assert count == 3 and hours > 0
    for entry, original in zip(resolved, entries, strict=True):
        assert Path(entry["audio_filepath"]).is_absolute() and Path(entry["audio_filepath"]).is_file()
        assert entry["text"] == manifest.normalize_text(original["text"])
    manifest.write_manifest(str(rel_dir / "missing.json"), [{**entries[0], "audio_filepath": "nope.flac"}])
    with pytest.raises(data.DataError, match=r"missing.json:1: audio file not found"):
        data.prepare_validation_manifest(str(rel_dir / "missing.json"), str(tmp_path / "work2"))


def test_unreadable_checkpoints_are_never_silently_dropped(tmp_path: Path):
    store = checkpoints.CheckpointStore(str(tmp_path / "checkpoints"), tmp_path / "scratch")
    assert store.newest_readable() is None
    for step in (4, 8):
        storage.write_bytes(storage.join(store.step_dir(step), checkpoints.CKPT_NAME), b"not a checkpoint")
        storage.mark_complete(store.step_dir(step))
    storage.write_bytes(storage.join(store.step_dir(12), checkpoints.CKPT_NAME), b"half written")  # no marker
    assert store.complete_steps() == [4, 8] and store.incomplete_steps() == [12]
    with pytest.raises(checkpoints.CheckpointError, match="none can be read; refusing to start from step 0"):
        store.newest_readable()


def test_cat_streams_a_file(tmp_path: Path):
    payload = os.urandom(3 * 1024 * 1024 + 17)
    (tmp_path / "blob").write_bytes(payload)
    out = subprocess.run(
        [sys.executable, "-m", "components.train.cat", str(tmp_path / "blob")],
        capture_output=True,
        check=True,
    )
    assert out.stdout == payload
    missing = subprocess.run(
        [sys.executable, "-m", "components.train.cat", str(tmp_path / "nope")],
        capture_output=True,
        check=False,
    )
    assert missing.returncode == 1 and b"cannot read" in missing.stderr


# --- training runs -------------------------------------------------------------------------


def test_tiny_config_trains_on_the_bundled_shards(trained_run):
    run_dir, card, stderr = trained_run
    assert storage.is_complete(str(run_dir))
    assert (run_dir / "model.nemo").stat().st_size > 0
    assert json.loads((run_dir / "card.json").read_text()) == card
    assert card["steps"] == MAX_STEPS and card["model"] == str(run_dir / "model.nemo")
    assert card["hours_seen"] > 0 and card["throughput_audio_s_per_s"] > 0
    assert card["final_train_loss"] > 0 and 0 <= card["val_wer"] <= 1.5
    assert card["precision"] == "32" and card["resumed_from_step"] == 0
    # plain log lines: loss, lr, throughput each step (tiny logs every step), val_wer, checkpoints
    steps = re.findall(r"step (\d+)/12 \(\d+%\) loss [\d.]+ lr [\d.e-]+ audio/s [\d.]+", stderr)
    assert [int(s) for s in steps] == list(range(1, MAX_STEPS + 1))
    assert re.search(r"validation at step 6: val_wer [\d.]+", stderr)
    assert "no checkpoint in" in stderr and "starting at step 0" in stderr
    complete = checkpoints.CheckpointStore(str(run_dir / "checkpoints"), run_dir / "scratch").complete_steps()
    assert complete == [4, 8]  # every 4 steps, none at max_steps (model.nemo is the final state)
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    # a rerun of a finished run does nothing and prints the same card
    again = run_asrflow("train", "x", "--val", "y", "--run-dir", str(run_dir), timeout=120)
    assert again.returncode == 0 and last_json_line(again.stdout) == card


def test_sigterm_exits_143_and_the_rerun_resumes_to_the_same_step(
    trained_run, bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    rng = random.Random()
    extra_steps = rng.randint(1, 5)
    run_dir = tmp_path / "run"
    log_path = tmp_path / "first.log"
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [ASRFLOW, *train_args(bundled_shards, bundled_eval_manifest, run_dir)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
            env=asrflow_env(),
            text=True,
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            target = None
            while process.poll() is None and time.monotonic() < deadline:
                text = log_path.read_text()
                if target is None and "checkpoint step 4 saved" in text:
                    target = 4 + extra_steps
                if target is not None and f"step {target}/{MAX_STEPS}" in text:
                    process.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.05)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    first = log_path.read_text()
    assert target is not None, first[-4000:]
    assert code == 143, f"exit {code}, SIGTERM after step {target}\n{first[-4000:]}"
    killed_at = max(int(s) for s in re.findall(r"step (\d+)/12 ", first))
    assert killed_at < MAX_STEPS and "SIGTERM received" in first
    assert not (run_dir / "model.nemo").exists() and not storage.is_complete(str(run_dir))

    second = run_asrflow(*train_args(bundled_shards, bundled_eval_manifest, run_dir))
    assert second.returncode == 0, explain(second)
    resumed = int(re.search(r"resuming from checkpoint .* \(step (\d+)\)", second.stderr).group(1))
    assert killed_at - resumed <= EVERY  # at most one checkpoint interval recomputed
    assert resumed == killed_at  # here the SIGTERM checkpoint made it: nothing recomputed
    card = last_json_line(second.stdout)
    assert card["steps"] == trained_run[1]["steps"] == MAX_STEPS
    assert card["resumed_from_step"] == resumed
    assert card["hours_seen"] > 0
    new_steps = [int(s) for s in re.findall(r"step (\d+)/12 ", second.stderr)]
    assert new_steps == list(range(resumed + 1, MAX_STEPS + 1))
    seeds = [re.search(r"data-order seed (\d+)", log).group(1) for log in (first, second.stderr)]
    assert seeds[0] != seeds[1]  # the resumed attempt does not replay the same batches


def test_a_corrupt_newest_checkpoint_is_skipped_for_the_previous_one(
    trained_run, bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run[0] / "checkpoints", run_dir / "checkpoints")
    newest = run_dir / "checkpoints" / "step-00000008" / "model.ckpt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # truncated, still marked complete
    result = run_asrflow(*train_args(bundled_shards, bundled_eval_manifest, run_dir))
    assert result.returncode == 0, explain(result)
    assert re.search(  # its marker's sha256 tells before torch.load does
        r"checkpoint \S*step-00000008/model.ckpt is refused: its bytes changed after it was written "
        r".*trying the previous one",
        result.stderr,
    )
    assert "resuming from checkpoint" in result.stderr and "(step 4)" in result.stderr
    card = last_json_line(result.stdout)
    assert card["steps"] == MAX_STEPS and card["resumed_from_step"] == 4


def test_two_rank_ddp_on_cpu(bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    result = run_asrflow(
        *train_args(bundled_shards, bundled_eval_manifest, run_dir, "--devices", "2", "trainer.max_steps=6")
    )
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert (card["devices"], card["num_nodes"], card["steps"]) == (2, 1, 6)
    assert "training from step 0 to 6 on 2 process(es)" in result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_node_torchrun_on_localhost(bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path):
    run_dir = tmp_path / "run"
    port = str(_free_port())
    processes = []
    for node in (0, 1):
        command = [
            TORCHRUN,
            "--nnodes",
            "2",
            "--nproc-per-node",
            "1",
            "--node-rank",
            str(node),
            "--master-addr",
            "127.0.0.1",
            "--master-port",
            port,
            ASRFLOW,
            *train_args(bundled_shards, bundled_eval_manifest, run_dir, "trainer.max_steps=6"),
        ]
        processes.append(
            subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=asrflow_env()
            )
        )
    outputs = [p.communicate(timeout=RUN_TIMEOUT_S) for p in processes]
    for process, (_, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-6000:]
    card = last_json_line(outputs[0][0])
    assert (card["devices"], card["num_nodes"], card["steps"]) == (1, 2, 6)  # from torchrun's environment
    assert storage.is_complete(str(run_dir))


def test_fine_tuning_from_a_nemo_with_a_frozen_encoder(
    trained_run, bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    import torch
    from nemo.collections.asr.models import ASRModel

    source = trained_run[0] / "model.nemo"
    run_dir = tmp_path / "run"
    result = run_asrflow(
        *train_args(
            bundled_shards,
            bundled_eval_manifest,
            run_dir,
            "--init-from",
            str(source),
            "--freeze-encoder",
            "trainer.max_steps=4",
        )
    )
    assert result.returncode == 0, explain(result)
    assert re.search(r"initialised EncDecCTCModel \(\d+ parameters\) from \S*model.nemo", result.stderr)
    assert "encoder frozen: training" in result.stderr
    before = ASRModel.restore_from(str(source), map_location="cpu").state_dict()
    after = ASRModel.restore_from(str(run_dir / "model.nemo"), map_location="cpu").state_dict()
    encoder = [k for k in before if k.startswith("encoder.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)  # weights and BN statistics
    assert not torch.equal(
        before["decoder.decoder_layers.0.weight"], after["decoder.decoder_layers.0.weight"]
    )


def test_bpe_tokenizer_and_bpe_config(bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path):
    tokenizer = tmp_path / "tokenizer"
    made = run_asrflow("train-tokenizer", str(bundled_shards), "--out", str(tokenizer), "--vocab-size", "64")
    assert made.returncode == 0, explain(made)
    card = last_json_line(made.stdout)
    assert card["vocab_size"] <= 64 and card["sentences"] == 300
    assert storage.is_complete(str(tokenizer)) and (tokenizer / "tokenizer.model").stat().st_size > 0
    # a manifest works as the source too, and the same input gives the same tokenizer bytes
    for name in ("t2", "t3"):
        train_tokenizer(str(bundled_shards / "tarred_audio_manifest.json"), str(tmp_path / name), 64)
    assert (tmp_path / "t2" / "tokenizer.model").read_bytes() == (
        tmp_path / "t3" / "tokenizer.model"
    ).read_bytes()
    assert (tmp_path / "t2" / "tokenizer.model").read_bytes() == (tokenizer / "tokenizer.model").read_bytes()

    shrink = [
        "model.encoder.n_layers=1",
        "model.encoder.d_model=32",
        "model.encoder.n_heads=2",
        "model.encoder.subsampling_conv_channels=32",
        "model.encoder.conv_kernel_size=9",
        "model.train_ds.batch_duration=12",
        "model.train_ds.num_workers=0",
        "model.train_ds.use_bucketing=false",
        "model.validation_ds.num_workers=0",
        "trainer.max_steps=3",
        "trainer.limit_train_batches=3",
        "trainer.val_check_interval=3",
        "asrflow.log_every=1",
    ]
    run_dir = tmp_path / "run"
    result = run_asrflow(
        "train",
        str(bundled_shards),
        "--val",
        str(bundled_eval_manifest),
        "--config",
        "conformer_ctc_bpe",
        "--tokenizer",
        str(tokenizer),
        "--run-dir",
        str(run_dir),
        "--checkpoint-every",
        "2",
        *shrink,
    )
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert card["model_class"] == "EncDecCTCModelBPE" and card["steps"] == 3
    assert card["val_wer"] is not None


def test_gcs_shards_and_run_dir(
    bundled_shards: Path, bundled_eval_manifest: Path, gcs_bucket: str, tmp_path: Path
):
    """Shards streamed from gs:// through the pipe: command; checkpoints and model on gs://."""
    shards = storage.join(gcs_bucket, "tarred")
    for path in sorted(bundled_shards.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(shards, str(path.relative_to(bundled_shards))))
    val_manifest = gcs_validation_set(bundled_eval_manifest, storage.join(gcs_bucket, "validation"), count=6)
    run_dir = storage.join(gcs_bucket, "runs", "r1")
    env = {**asrflow_env(), "ASRFLOW_SCRATCH": str(tmp_path / "scratch")}
    result = subprocess.run(
        [
            ASRFLOW,
            "train",
            shards,
            "--val",
            val_manifest,
            "--config",
            "tiny",
            "--run-dir",
            run_dir,
            "--checkpoint-every",
            "2",
            "trainer.max_steps=4",
        ],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert card["model"] == storage.join(run_dir, "model.nemo") and card["steps"] == 4
    assert storage.is_complete(run_dir) and storage.stat(card["model"]).size > 0
    assert storage.is_complete(storage.join(run_dir, "checkpoints", "step-00000002"))
    assert storage.list_files(storage.join(run_dir, "tensorboard"))


FULL_SETTINGS = TrainSettings(
    tarred_dir="shards",
    val_manifest="val.json",
    run_dir="gs://b/runs/r",
    config="small",
    overrides=["model.optim.lr=0.5"],
    max_steps=9,
    seed=7,
    checkpoint_every=3,
    bucket_bins=[1.25, 2.5, 5],
    max_bad_shards=2,
    stall_timeout=0.5,
    tokenizer_dir="gs://b/tokenizer",
    init_from="m.nemo",
    freeze_encoder=True,
    train_last_layers=1,
    devices=2,
    num_nodes=3,
    precision="32",
)


@pytest.mark.parametrize(
    "settings",
    [FULL_SETTINGS, TrainSettings(tarred_dir="shards", val_manifest="val.json", run_dir="run")],
    ids=["every-setting", "defaults"],
)
def test_the_argv_of_settings_parses_back_into_the_same_settings(settings: TrainSettings):
    """What a KFP task or a TrainJob runs (to_argv) is what ``asrflow train`` parses."""
    from components.train.cli import parse_train_args

    assert parse_train_args(settings.to_argv()) == settings


def test_the_cli_options_are_the_settings_fields():
    from components.train.cli import train as train_command

    names = [param.name for param in train_command.params if param.name != "help"]
    assert names == [field.name for field in dataclasses.fields(TrainSettings)]
    flags = {opt for param in train_command.params for opt in getattr(param, "opts", [])}
    assert {"--val", "--run-dir", "--tokenizer", "--max-bad-shards", "--stall-timeout"} <= flags


def test_settings_that_stand_for_overrides_come_before_the_explicit_ones():
    assert FULL_SETTINGS.config_overrides() == [
        "model.train_ds.bucket_duration_bins=[1.25,2.5,5.0]",
        "trainer.max_steps=9",
        "asrflow.seed=7",
        "model.optim.lr=0.5",
    ]
    cfg = config.load_config("tiny", [*FULL_SETTINGS.config_overrides(), "trainer.max_steps=4"])
    assert cfg.trainer.max_steps == 4 and cfg.asrflow.seed == 7  # the explicit override wins


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"overrides": ["oops"]}, "overrides must be key=value, got: oops"),
        ({"max_bad_shards": -1}, "--max-bad-shards must be 0 or more, got -1"),
        ({"devices": 0}, "--devices must be 1 or more, got 0"),
        ({"precision": "64"}, "--precision must be one of 32, 16-mixed"),
        ({"stall_timeout": "soon"}, "--stall-timeout takes float values, got 'soon'"),
        ({"bucket_bins": [1.0, "x"]}, "--bucket-bins takes float values, got 'x'"),
        ({"run_dir": None}, "--run-dir is required"),
        ({"freeze_encoder": False}, "--train-last-layers needs --freeze-encoder"),
        ({"train_last_layers": -1}, "--train-last-layers must be 0 or more, got -1"),
    ],
)
def test_settings_are_checked_when_made(change: dict, message: str):
    with pytest.raises(TrainError, match=re.escape(message)):
        dataclasses.replace(FULL_SETTINGS, **change)


def test_bad_settings_on_the_command_line():
    from click.testing import CliRunner

    from pipelines.cli import main

    result = CliRunner().invoke(main, ["train", "s", "--val", "v", "--run-dir", "r", "--devices", "0"])
    assert result.exit_code == 2 and "Invalid value for '--devices'" in result.output
    result = CliRunner().invoke(main, ["train", "s", "--val", "v", "--run-dir", "r", "trainer.max_steps"])
    assert result.exit_code == 1
    assert "Error: overrides must be key=value, got: trainer.max_steps" in result.output


# KFP components that take the training settings, and the fields each works out itself.
COMPONENT_OWN_FIELDS = {
    "train": {"run_dir"},  # from data_root and run_id
    "launch_trainjob": {"run_dir", "devices"},  # torchrun starts a process per GPU of the pool
}


def training_components() -> dict[str, object]:
    from components.train.component import train
    from pipelines.launch_trainjob import launch_trainjob

    return {"train": train.python_func, "launch_trainjob": launch_trainjob.python_func}


@pytest.mark.parametrize("name", sorted(COMPONENT_OWN_FIELDS))
def test_component_parameters_are_the_settings_fields(name: str):
    """KFP reads parameters from literal signatures: each field must be a parameter (but those
    the component works out itself) with its KFP type and default (the field's ``unset`` value
    for None), described in the docstring."""
    import docstring_parser

    func = training_components()[name]
    parameters = inspect.signature(func).parameters
    described = {p.arg_name for p in docstring_parser.parse(func.__doc__).params}
    for field in dataclasses.fields(TrainSettings):
        if field.name in COMPONENT_OWN_FIELDS[name]:
            assert field.name not in parameters, (name, field.name)
            continue
        parameter = parameters[field.name]
        assert parameter.annotation is kfp_type(TrainSettings, field), (name, field.name)
        if parameter.default is not inspect.Parameter.empty:  # a required one: the pipeline passes it
            assert parameter.default == kfp_default(field), (name, field.name)
        assert field.name in described, (name, field.name)
    defaults = {k: p.default for k, p in parameters.items() if p.default is not inspect.Parameter.empty}
    required = {"tarred_dir": "t", "val_manifest": "v"}
    made = TrainSettings.from_kfp({**defaults, **required}, run_dir="r", num_nodes=None)
    assert made == TrainSettings(**required, run_dir="r")


def test_bins_from_the_pipeline_win_over_metadata_yaml(bundled_shards: Path, tmp_path: Path):
    """The pipeline hands estimate-buckets' output to train (the bucket_bins setting), so the
    bins do not depend on what metadata.yaml holds when training starts."""
    from components.train.data import open_tarred_dataset

    settings = TrainSettings(tarred_dir="s", val_manifest="v", run_dir="r", bucket_bins=[1.25, 2.5, 5.0])
    overrides = settings.config_overrides()
    assert overrides == ["model.train_ds.bucket_duration_bins=[1.25,2.5,5.0]"]
    cfg = config.load_config("tiny", overrides)
    with open_dict(cfg.model.train_ds):
        cfg.model.train_ds.use_bucketing = True
    dataset = open_tarred_dataset(str(bundled_shards), str(tmp_path / "data"))
    assert dataset.bucket_duration_bins() is None  # the shared fixture has no bins of its own
    config.configure_data(cfg, dataset, "val.json", seed=0)
    assert list(cfg.model.train_ds.bucket_duration_bins) == [1.25, 2.5, 5.0]
    assert cfg.model.train_ds.num_buckets == 4 and cfg.model.train_ds.use_bucketing


def test_train_component_in_kfp_local(bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path):
    from kfp import local

    from components.train.component import train as train_component

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    task = train_component(
        tarred_dir=str(bundled_shards),
        val_manifest=str(bundled_eval_manifest),
        data_root=str(tmp_path / "root"),
        run_id="run-1",
        config="tiny",
        max_steps=3,
        checkpoint_every=2,
    )
    run_dir = tmp_path / "root" / "runs" / "run-1"
    assert task.outputs["model_uri"] == str(run_dir / "model.nemo")
    card = json.loads(Path(task.outputs["card"].path).read_text())
    assert card["steps"] == 3 and storage.is_complete(str(run_dir))
    assert task.outputs["metrics"].metadata["hours_seen"] > 0


def test_the_pipelines_tokenizer_step_is_keyed_by_the_training_text(bundled_shards: Path, tmp_path: Path):
    """train_tokenizer (the KFP component, in kfp.local) trains a tokenizer for a sub-word config
    only, under DATA_ROOT/tokenizers/<digest of the text and settings>: the same text from
    another path finds it complete; another vocabulary size is another directory."""
    from kfp import local

    from components.layout import TOKENIZERS_DIR
    from components.train.component import train_tokenizer as component
    from components.train.tokenizer import tokenizer_for_config

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    root = tmp_path / "root"
    char = component(source=str(bundled_shards), data_root=str(root), config="tiny")
    assert char.outputs["Output"] == ""
    assert "character model" in json.loads(Path(char.outputs["card"].path).read_text())["reason"]
    bpe = component(
        source=str(bundled_shards), data_root=str(root), config="conformer_ctc_bpe", vocab_size=64
    )
    out = Path(bpe.outputs["Output"])
    assert out.parent == root / TOKENIZERS_DIR and storage.is_complete(str(out))
    assert json.loads(Path(bpe.outputs["card"].path).read_text())["vocab_size"] <= 64
    written = (out / "tokenizer.model").stat().st_mtime_ns

    same_text = tmp_path / "copy.json"
    shutil.copy(bundled_shards / "tarred_audio_manifest.json", same_text)
    again, card = tokenizer_for_config(str(same_text), str(root), "conformer_ctc_bpe", vocab_size=64)
    assert again == str(out) and (out / "tokenizer.model").stat().st_mtime_ns == written
    assert card["vocab_size"] <= 64
    other, _ = tokenizer_for_config(str(bundled_shards), str(root), "conformer_ctc_bpe", vocab_size=48)
    assert Path(other).parent == out.parent and other != str(out)
    assert tokenizer_for_config(str(bundled_shards), str(root), "conformer_ctc_bpe", vocab_size=0)[0] == ""

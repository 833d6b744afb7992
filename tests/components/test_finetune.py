"""Fine-tuning (components/train/finetune.py): a run that starts from a .nemo or a hub name.

Tiny models (d_model 32-48, one or two layers) and a few CPU steps. The pretrained name is
resolved by NeMo's ``ASRModel.from_pretrained`` and huggingface_hub's own cache lookup, offline
(``HF_HUB_OFFLINE=1``), in a hub cache the test lays out as huggingface_hub writes it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from components.train import config, data, finetune
from components.train.errors import TrainError
from components.train.tokenizer import train_tokenizer

ASRFLOW = str(Path(sys.executable).with_name("asrflow"))
RUN_TIMEOUT_S = 300
HUB_MODEL = "tiny-org/tiny-asr"
HUB_REVISION = "0123456789abcdef0123456789abcdef01234567"
SHRINK_BPE = [
    "model.encoder.n_layers=1",
    "model.encoder.d_model=32",
    "model.encoder.n_heads=2",
    "model.encoder.subsampling_conv_channels=32",
    "model.encoder.conv_kernel_size=9",
    "model.preprocessor.features=40",
    "model.train_ds.batch_duration=12",
    "model.train_ds.num_workers=0",
    "model.train_ds.use_bucketing=false",
    "model.validation_ds.num_workers=0",
    "trainer.max_steps=3",
]
SHRINK_RNNT = [*SHRINK_BPE, "model.model_defaults.pred_hidden=32", "model.model_defaults.joint_hidden=32"]
SUB_WORD_CONFIGS = {
    "conformer_ctc_bpe": SHRINK_BPE,
    "small_ctc_bpe": SHRINK_BPE,
    "small_rnnt_bpe": SHRINK_RNNT,
}


def weights(model) -> dict:
    return {key: value.detach().clone() for key, value in model.state_dict().items()}


def restored(path: Path):
    from nemo.collections.asr.models import ASRModel

    return ASRModel.restore_from(str(path), map_location="cpu")


def with_data(cfg, shards: Path, val_manifest: Path, work: Path):
    """``cfg`` with the bundled shards and validation set in its data sections, as a run has it."""
    dataset = data.open_tarred_dataset(str(shards), str(work / "data"))
    val_local, _, _ = data.prepare_validation_manifest(str(val_manifest), str(work / "validation"))
    config.configure_data(cfg, dataset, val_local, 0)
    return cfg


@pytest.fixture(scope="module")
def tokenizers(bundled_shards: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """Two SentencePiece tokenizers of the bundled text, of 32 and 64 tokens."""
    root = tmp_path_factory.mktemp("tokenizers")
    for size in (32, 64):
        train_tokenizer(str(bundled_shards), str(root / str(size)), vocab_size=size)
    return {size: root / str(size) for size in (32, 64)}


@pytest.fixture(scope="module")
def bpe_nemo_model(tokenizers: dict[int, Path], tmp_path_factory: pytest.TempPathFactory):
    """A factory: an untrained one-layer sub-word model of a config (CTC or RNN-T) with the
    32-token tokenizer, saved as .nemo."""
    import lightning.pytorch as pl

    from components.train.model import build_model

    root = tmp_path_factory.mktemp("bpe-models")

    def make(name: str) -> Path:
        path = root / f"{name}.nemo"
        if not path.exists():
            pl.seed_everything(7, verbose=False)
            cfg = config.load_config(name, [*SUB_WORD_CONFIGS[name], f"model.tokenizer.dir={tokenizers[32]}"])
            build_model(cfg).save_to(str(path))
        return path

    return make


def output_classes(model) -> int:
    """The classes of a model's output layer, the blank included (a transducer's joint, a CTC decoder)."""
    return (model.joint if hasattr(model, "joint") else model.decoder).num_classes_with_blank


def hub_cache(root: Path, repo_id: str, nemo: Path) -> Path:
    """``HF_HOME`` with ``repo_id`` cached as huggingface_hub lays a download out:
    ``hub/models--ORG--NAME/refs/main`` naming a snapshot that holds ``NAME.nemo``."""
    repo = root / "hub" / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(HUB_REVISION)
    snapshot = repo / "snapshots" / HUB_REVISION
    snapshot.mkdir(parents=True)
    shutil.copy(nemo, snapshot / f"{repo_id.split('/')[1]}.nemo")
    return root


def offline_env(hf_home: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HF_HUB_CACHE", None)
    return env


def data_and_config(shards: Path, val_manifest: Path, config_name: str) -> list[str]:
    """The first arguments of ``asrflow train``: the data and the config."""
    return [str(shards), "--val", str(val_manifest), "--config", config_name]


def run_train(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ASRFLOW, "train", *args], capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=env, check=False
    )


# --- the config: the pretrained architecture, the run's data and optim ---------------------------


def test_init_from_a_nemo_keeps_its_architecture_and_weights_with_the_runs_data_and_optim(
    tiny_nemo_model: Path, bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    import torch

    cfg = with_data(config.load_config("small"), bundled_shards, bundled_eval_manifest, tmp_path)
    run_optim = dict(cfg.model.optim)
    assert cfg.model.encoder.d_model == 144  # small's architecture, not tiny's
    labels = finetune.fine_tuning_config(cfg, finetune.pretrained_config(str(tiny_nemo_model), "tiny"))
    assert cfg.model.encoder.d_model == 48 and cfg.model.encoder.n_layers == 2  # the pretrained model's
    assert dict(cfg.model.optim) == run_optim  # the run's
    assert cfg.model.train_ds.tarred_audio_filepaths.startswith(str(bundled_shards))
    assert labels == list(config.load_config("small").model.labels)

    model = finetune.load_pretrained(cfg, str(tiny_nemo_model), None, None, labels)
    source = weights(restored(tiny_nemo_model))
    assert source.keys() == model.state_dict().keys()
    assert all(torch.equal(value, model.state_dict()[key]) for key, value in source.items())
    assert model.cfg.optim.lr == run_optim["lr"] and model._train_dl is not None


@pytest.mark.parametrize("name", sorted(SUB_WORD_CONFIGS))
def test_a_new_tokenizer_gives_a_new_decoder_and_keeps_the_encoder(
    name: str,
    bpe_nemo_model,
    tokenizers: dict[int, Path],
    bundled_shards: Path,
    bundled_eval_manifest: Path,
    tmp_path: Path,
):
    import torch

    pretrained = bpe_nemo_model(name)
    source_model = restored(pretrained)
    source = weights(source_model)
    assert output_classes(source_model) == 33  # 32 tokens and the blank

    def run_config():
        cfg = config.load_config(name, SUB_WORD_CONFIGS[name])
        cfg = with_data(cfg, bundled_shards, bundled_eval_manifest, tmp_path)
        finetune.fine_tuning_config(cfg, finetune.pretrained_config(str(pretrained), name))
        return cfg

    cfg = run_config()
    model = finetune.load_pretrained(cfg, str(pretrained), None, str(tokenizers[64]), None)
    assert model.tokenizer.vocab_size == 64 and output_classes(model) == 65
    assert (
        len(cfg.model.decoder.vocabulary if "vocabulary" in cfg.model.decoder else cfg.model.joint.vocabulary)
        == 64
    )
    encoder = [key for key in source if key.startswith(("encoder.", "preprocessor."))]
    assert encoder and all(torch.equal(source[key], model.state_dict()[key]) for key in encoder)

    own = finetune.load_pretrained(run_config(), str(pretrained), None, None, None)
    assert own.tokenizer.vocab_size == 32 and output_classes(own) == 33  # no --tokenizer: the model's own
    assert all(torch.equal(value, own.state_dict()[key]) for key, value in source.items())


def test_a_tokenizer_for_a_character_model_is_refused(tiny_nemo_model: Path, tokenizers: dict[int, Path]):
    model = restored(tiny_nemo_model)
    with pytest.raises(
        TrainError, match=r"--tokenizer .*: the --init-from model \(EncDecCTCModel\) is a character"
    ):
        finetune.change_vocabulary(model, str(tokenizers[32]), None)


def test_freezing_all_but_the_last_layers(tiny_nemo_model: Path):
    model = restored(tiny_nemo_model)
    finetune.freeze_encoder(model, train_last_layers=1)
    layers = finetune.encoder_layers(model)
    assert not any(p.requires_grad for p in model.encoder.pre_encode.parameters())
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert all(p.requires_grad for p in model.decoder.parameters())
    model.train()
    finetune.keep_frozen_in_eval(model, 1)
    assert not layers[0].training and layers[1].training and model.decoder.training
    with pytest.raises(TrainError, match="--train-last-layers 2: the encoder has 2 layers"):
        finetune.freeze_encoder(restored(tiny_nemo_model), train_last_layers=2)


# --- what --init-from accepts ----------------------------------------------------------------------


def test_init_from_names_and_files(tmp_path: Path):
    assert finetune.is_pretrained_name("nvidia/stt_en_fastconformer_ctc_large")
    assert not finetune.is_pretrained_name("runs/r1/model.nemo")
    assert not finetune.is_pretrained_name("gs://bucket/runs/r1/model.nemo")
    assert not finetune.is_pretrained_name("model")
    with pytest.raises(TrainError, match="not found: .*missing.nemo"):
        finetune.resolve_pretrained(str(tmp_path / "missing.nemo"), tmp_path)
    with pytest.raises(TrainError, match="neither a .nemo file nor a pretrained model name"):
        finetune.resolve_pretrained("just-a-word", tmp_path)
    bad = tmp_path / "bad.nemo"
    bad.write_bytes(b"not a tar archive")
    with pytest.raises(TrainError, match=r"--init-from .*bad.nemo: .*bad.nemo is not a readable .nemo model"):
        finetune.pretrained_config(finetune.resolve_pretrained(str(bad), tmp_path), str(bad))


def test_a_name_not_in_the_offline_cache_fails_clearly(tiny_nemo_model: Path, tmp_path: Path):
    env = offline_env(hub_cache(tmp_path / "hf", HUB_MODEL, tiny_nemo_model))
    code = (
        "from pathlib import Path\n"
        "from components.train import finetune\n"
        f"print(finetune.resolve_pretrained({HUB_MODEL!r}, Path('.')))\n"
        "try:\n"
        "    finetune.resolve_pretrained('nobody/missing-model', Path('.'))\n"
        "except finetune.TrainError as err:\n"
        "    print('ERROR', err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    found, error = result.stdout.strip().splitlines()[-2:]
    assert found == str(
        tmp_path / "hf" / "hub" / "models--tiny-org--tiny-asr" / "snapshots" / HUB_REVISION / "tiny-asr.nemo"
    )
    assert error.startswith(
        "ERROR --init-from nobody/missing-model: pretrained model not found in the Hugging Face cache "
        f"({tmp_path / 'hf' / 'hub'}) nor on the hub"
    ), error


# --- a whole fine-tuning run: a hub name, offline, its encoder frozen but the last layer ----------------


def test_fine_tuning_from_a_hub_name_offline_with_the_last_layer_training(
    tiny_nemo_model: Path, bundled_shards: Path, bundled_eval_manifest: Path, tmp_path: Path
):
    import torch

    env = offline_env(hub_cache(tmp_path / "hf", HUB_MODEL, tiny_nemo_model))
    run_dir = tmp_path / "run"
    result = run_train(
        env,
        str(bundled_shards),
        "--val",
        str(bundled_eval_manifest),
        "--config",
        "tiny",
        "--run-dir",
        str(run_dir),
        "--init-from",
        HUB_MODEL,
        "--freeze-encoder",
        "--train-last-layers",
        "1",
        "--checkpoint-every",
        "100",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
    )
    assert result.returncode == 0, result.stderr[-6000:]
    assert re.search(rf"pretrained {HUB_MODEL}: \S*snapshots/{HUB_REVISION}/tiny-asr.nemo", result.stderr)
    assert "encoder frozen but its last 1 layer(s)" in result.stderr
    assert (
        f"fine-tuning init_from: {HUB_MODEL}, vocabulary: 38 characters, frozen: the encoder but its last 1"
        in (result.stderr)
    )
    before = weights(restored(tiny_nemo_model))
    after = weights(restored(run_dir / "model.nemo"))
    frozen = [k for k in before if k.startswith(("encoder.pre_encode.", "encoder.layers.0."))]
    tail = [k for k in before if k.startswith("encoder.layers.1.") and k.endswith(".weight")]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)  # weights and BN statistics
    assert tail and any(not torch.equal(before[k], after[k]) for k in tail)
    assert not torch.equal(
        before["decoder.decoder_layers.0.weight"], after["decoder.decoder_layers.0.weight"]
    )


def test_fine_tuning_a_transducer_with_a_new_tokenizer_and_a_frozen_encoder(
    bpe_nemo_model,
    tokenizers: dict[int, Path],
    bundled_shards: Path,
    bundled_eval_manifest: Path,
    tmp_path: Path,
):
    """A whole run: RNN-T from a .nemo with a 32-token tokenizer, our 64-token one, encoder frozen;
    then a retry of it resumes its checkpoint (the same architecture and vocabulary made again)."""
    import torch

    pretrained = bpe_nemo_model("small_rnnt_bpe")
    run_dir = tmp_path / "run"
    args = [
        *data_and_config(bundled_shards, bundled_eval_manifest, "small_rnnt_bpe"),
        "--run-dir",
        str(run_dir),
        "--init-from",
        str(pretrained),
        "--tokenizer",
        str(tokenizers[64]),
        "--freeze-encoder",
        "--checkpoint-every",
        "1",
        "model.train_ds.batch_duration=12",
        "model.train_ds.num_workers=0",
        "model.train_ds.use_bucketing=false",
        "model.validation_ds.num_workers=0",
        "trainer.max_steps=2",
        "trainer.limit_train_batches=2",
        "trainer.val_check_interval=2",
        "asrflow.log_every=1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_train(env, *args)
    assert result.returncode == 0, result.stderr[-6000:]
    assert "vocabulary changed: 32 -> 64 tokens" in result.stderr
    assert (
        f"vocabulary: new tokenizer {tokenizers[64]} (64 tokens; decoder trained anew), frozen: the encoder\n"
        in (result.stderr)
    )
    assert re.search(
        r"fine-tuning config: the architecture from .*EncDecRNNTBPEModel.*not used: .*model\.encoder",
        result.stderr,
    )
    before = weights(restored(pretrained))
    trained = restored(run_dir / "model.nemo")
    after = weights(trained)
    assert type(trained).__name__ == "EncDecRNNTBPEModel"
    assert trained.tokenizer.vocab_size == 64 and output_classes(trained) == 65
    encoder = [key for key in before if key.startswith("encoder.")]
    assert encoder and all(torch.equal(before[key], after[key]) for key in encoder)

    for name in ("model.nemo", "card.json", "_SUCCESS"):  # as if preempted after the checkpoint of step 1
        (run_dir / name).unlink()
    retry = run_train(env, *args)
    assert retry.returncode == 0, retry.stderr[-6000:]
    assert re.search(r"resuming from checkpoint \S+ \(step 1\)", retry.stderr)
    assert "gives the architecture; the weights come from the checkpoint" in retry.stderr
    assert output_classes(restored(run_dir / "model.nemo")) == 65
    assert json.loads((run_dir / "card.json").read_text())["fine_tuning"] == {
        "init_from": str(pretrained),
        "vocabulary": f"new tokenizer {tokenizers[64]} (64 tokens; decoder trained anew)",
        "frozen": "the encoder",
    }


# --- a fresh model's encoder from another model (asrflow.init_encoder_from) ---------------------


def test_a_transducer_starts_its_encoder_from_a_ctc_model(
    bpe_nemo_model, tokenizers: dict[int, Path], tmp_path: Path
):
    """small_rnnt_bpe's encoder from a small_ctc_bpe .nemo: every encoder tensor taken, the
    prediction network and joint left as built."""
    import lightning.pytorch as pl
    import torch

    from components.train.model import build_model

    ctc = bpe_nemo_model("small_ctc_bpe")
    pl.seed_everything(8, verbose=False)  # another init than the CTC model's
    cfg = config.load_config("small_rnnt_bpe", [*SHRINK_RNNT, f"model.tokenizer.dir={tokenizers[64]}"])
    model = build_model(cfg)
    fresh = weights(model)
    finetune.init_encoder(model, str(ctc), tmp_path)

    source, after = weights(restored(ctc)), weights(model)
    encoder = [key for key in after if key.startswith("encoder.")]
    assert encoder and all(torch.equal(after[key], source[key]) for key in encoder)
    assert any(not torch.equal(fresh[key], after[key]) for key in encoder)
    rest = [key for key in after if not key.startswith("encoder.")]
    assert rest and all(torch.equal(fresh[key], after[key]) for key in rest)


def test_an_encoder_of_another_shape_or_a_file_that_is_no_nemo_is_refused(
    bpe_nemo_model, tokenizers: dict[int, Path], tmp_path: Path
):
    from components.train.model import build_model

    cfg = config.load_config(
        "small_rnnt_bpe", [*SHRINK_RNNT, "model.encoder.d_model=48", f"model.tokenizer.dir={tokenizers[32]}"]
    )
    model = build_model(cfg)
    with pytest.raises(
        TrainError,
        match=r"init_encoder_from .*: the encoders differ: encoder\.\S+ is \(.*32.*\) there, \(.*48.*\) here",
    ):
        finetune.init_encoder(model, str(bpe_nemo_model("small_ctc_bpe")), tmp_path)
    with pytest.raises(TrainError, match=r"the encoders differ: encoder\.\S+ is "):  # a Conformer's
        finetune.init_encoder(model, str(bpe_nemo_model("conformer_ctc_bpe")), tmp_path)
    not_nemo = tmp_path / "notes.nemo"
    not_nemo.write_text("not a tar")
    with pytest.raises(TrainError, match=r"notes\.nemo: not a \.nemo archive"):
        finetune.init_encoder(model, str(not_nemo), tmp_path)


def test_a_run_starts_its_encoder_from_a_ctc_model_and_refuses_init_from_beside_it(
    bpe_nemo_model,
    tokenizers: dict[int, Path],
    bundled_shards: Path,
    bundled_eval_manifest: Path,
    tmp_path: Path,
):
    ctc = bpe_nemo_model("small_ctc_bpe")
    args = [
        *data_and_config(bundled_shards, bundled_eval_manifest, "small_rnnt_bpe"),
        "--tokenizer",
        str(tokenizers[32]),
        *SHRINK_RNNT,
        "trainer.max_steps=1",
        "trainer.limit_train_batches=1",
        "trainer.val_check_interval=1",
        f"asrflow.init_encoder_from={ctc}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = run_train(env, *args, "--run-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr[-6000:]
    assert f"encoder initialised from {ctc} (" in result.stderr

    both = run_train(env, *args, "--run-dir", str(tmp_path / "both"), "--init-from", str(ctc))
    assert both.returncode != 0
    assert "--init-from and asrflow.init_encoder_from both start the model: give one" in both.stderr

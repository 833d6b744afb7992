"""Model families: every shipped config builds its family; each CPU family trains like CTC.

The families (components/train/families.py) that train on CPU, CTC with characters
(``tiny``), RNN-T with sub-words (``small_rnnt_bpe``) and hybrid RNN-T + CTC with sub-words
(``small_hybrid_rnnt_ctc_bpe``), each go through the same real ``asrflow train`` runs: a
SIGTERM saves a checkpoint and exits 143, the rerun resumes from that step to max_steps, and
the saved model.nemo restores and transcribes with every head. RNN-T also trains with DDP
over gloo. TDT (GPU only) is built, run forward and decoded on CPU, and its loss is checked
to refuse CPU still, as its family says.
"""

from __future__ import annotations

import json
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from components import manifest, storage
from components.train import config, families
from components.train.callbacks import validation_figures
from components.train.errors import TrainError
from components.train.model import build_model
from tests.components.test_train import ASRFLOW, asrflow_env, explain, last_json_line, run_asrflow

MAX_STEPS = 6
EVERY = 2
VAL_UTTERANCES = 6  # an untrained transducer decodes slowly (up to max_symbols a frame)
RUN_TIMEOUT_S = 300
# tiny sizes for the small_* transducer configs: each step well under a few seconds on a CPU
SHRINK_TRANSDUCER = (
    "model.encoder.n_layers=2",
    "model.encoder.d_model=48",
    "model.encoder.n_heads=2",
    "model.encoder.subsampling_conv_channels=32",
    "model.encoder.ff_expansion_factor=2",
    "model.model_defaults.pred_hidden=64",
    "model.model_defaults.joint_hidden=64",
    "model.train_ds.batch_duration=12",
    "model.train_ds.num_workers=0",
    "model.train_ds.num_buckets=4",
    "model.train_ds.bucket_buffer_size=200",
    "model.train_ds.shuffle_buffer_size=100",
    "model.train_ds.perturb_speed=false",
    "model.validation_ds.batch_duration=30",
)
SHORT_RUN = (
    f"trainer.max_steps={MAX_STEPS}",
    "trainer.limit_train_batches=3",
    "trainer.val_check_interval=3",
    "trainer.log_every_n_steps=1",
    "asrflow.log_every=1",
)
# the families that train on CPU: the config that trains each, and its overrides
CPU_FAMILIES = {
    "ctc_char": ("tiny", ()),
    "rnnt_bpe": ("small_rnnt_bpe", SHRINK_TRANSDUCER),
    "hybrid_rnnt_ctc_bpe": ("small_hybrid_rnnt_ctc_bpe", SHRINK_TRANSDUCER),
}


@pytest.fixture(scope="module")
def short_validation(bundled_eval_manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first VAL_UTTERANCES of the bundled validation set, audio paths absolute."""
    entries = []
    for entry in manifest.read_manifest(str(bundled_eval_manifest))[:VAL_UTTERANCES]:
        audio = Path(entry["audio_filepath"])
        entries.append({**entry, "audio_filepath": str(bundled_eval_manifest.parent / audio)})
    path = tmp_path_factory.mktemp("families") / "validation.json"
    manifest.write_manifest(str(path), entries)
    return path


def loaded(name: str, tokenizer: Path | str, overrides: tuple[str, ...] | list[str] = ()):
    """A shipped config, with ``tokenizer`` as its tokenizer when it is a sub-word one."""
    cfg = config.load_config(name, overrides)
    if config.is_bpe(cfg):
        cfg.model.tokenizer.dir = str(tokenizer)
    return cfg


# --- the table and the configs --------------------------------------------------------------


def test_every_family_but_tdt_only_has_a_shipped_config_and_only_tdt_needs_a_gpu():
    built = {families.family_of(loaded(name, "unused")).name for name in config.config_names()}
    assert built == {f.name for f in families.FAMILIES} - {"tdt_bpe"}
    assert {f.name for f in families.FAMILIES if not f.trains_on_cpu} == {"tdt_bpe", "hybrid_tdt_ctc_bpe"}
    assert set(CPU_FAMILIES) == {f.name for f in families.FAMILIES if f.trains_on_cpu} - {"ctc_bpe"}
    for family in families.FAMILIES:
        assert family.heads[0] == ("ctc" if family.loss == "ctc" else "rnnt"), family
        assert ("ctc" in family.heads[1:]) == family.hybrid, family


def test_each_transducer_config_names_its_nemo_reference():
    for name in config.config_names():
        if name.startswith("fastconformer_"):
            text = (config.CONF_DIR / f"{name}.yaml").read_text()
            reference = re.search(r"examples/asr/conf/fastconformer/\S+\.yaml", text)
            assert reference, f"{name}: which NeMo config does it derive from?"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": {"aux_ctc": {"ctc_loss_weight": 0.3}}}, "needs a transducer"),
        ({"model": {"joint": {"x": 1}}}, "no model family for a RNNT model with char tokens"),
        (
            {"model": {"joint": {"x": 1}, "tokenizer": {"dir": "t"}, "loss": {"loss_name": "tdt"}}},
            "model.decoding.model_type is 'rnnt'",
        ),
    ],
)
def test_a_structure_no_family_has_is_refused_naming_the_field(change: dict, message: str):
    cfg = OmegaConf.merge(config.load_config("tiny"), change)
    with pytest.raises(TrainError, match=re.escape(message)) as raised:
        families.family_of(cfg, "my.yaml")
    assert str(raised.value).startswith("my.yaml: ")


def test_validation_figures_of_each_head_and_without_a_loss():
    ctc = {"val_loss": 2.0, "val_wer_num": 3, "val_wer_denom": 10, "val_wer": 0.3}
    assert validation_figures(ctc) == [3.0, 10.0, 2.0, 1.0, 0.0, 0.0]
    transducer = {"val_wer_num": 3, "val_wer_denom": 10, "val_wer": 0.3}  # compute_eval_loss: false
    assert validation_figures(transducer) == [3.0, 10.0, 0.0, 0.0, 0.0, 0.0]
    hybrid = {**ctc, "val_wer_num_ctc": 4, "val_wer_denom_ctc": 10}
    assert validation_figures(hybrid) == [3.0, 10.0, 2.0, 1.0, 4.0, 10.0]


@pytest.mark.parametrize("name", config.config_names())
def test_every_shipped_config_builds_its_family(name: str, bpe_tokenizer: Path):
    cfg = loaded(name, bpe_tokenizer)
    family = families.family_of(cfg, name)
    model = build_model(cfg, where=name)
    assert type(model).__name__ == family.model_class.rpartition(".")[2]
    assert isinstance(model, family.nemo_class())
    assert families.family_of_model(model) == family
    assert families.heads_of_model(model) == family.heads
    assert sum(p.numel() for p in model.parameters()) > 50_000


# --- TDT: GPU training only; on CPU it builds, runs forward and decodes ------------------------


def test_tdt_builds_runs_forward_and_decodes_on_cpu_but_its_loss_needs_cuda(
    bpe_tokenizer: Path, short_validation: Path
):
    import soundfile
    import torch

    shrink = [o for o in SHRINK_TRANSDUCER if o.startswith(("model.encoder", "model.model_defaults"))]
    name = "fastconformer_hybrid_tdt_ctc_bpe"
    model = build_model(loaded(name, bpe_tokenizer, shrink))
    assert families.family_of_model(model).name == "hybrid_tdt_ctc_bpe"
    entries = manifest.read_manifest(str(short_validation))[:3]
    audio = [torch.tensor(soundfile.read(e["audio_filepath"], dtype="float32")[0]) for e in entries]
    signal_ = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
    lengths = torch.tensor([len(a) for a in audio])
    model.eval()
    with torch.no_grad():
        encoded, encoded_len = model.forward(input_signal=signal_, input_signal_length=lengths)
    assert encoded.shape[:2] == (3, 48) and encoded_len.max() == encoded.shape[2]
    for head in ("rnnt", "ctc"):  # greedy decoding with each head
        model.change_decoding_strategy(decoder_type=head, verbose=False)
        hypotheses = model.transcribe([e["audio_filepath"] for e in entries], batch_size=3, verbose=False)
        assert len(hypotheses) == 3 and all(isinstance(h.text, str) for h in hypotheses), head

    model.train()
    targets = [torch.tensor(model.tokenizer.text_to_ids(e["text"])) for e in entries]
    target_len = torch.tensor([len(t) for t in targets])
    targets = torch.nn.utils.rnn.pad_sequence(targets, batch_first=True)
    encoded, encoded_len = model.forward(input_signal=signal_, input_signal_length=lengths)
    decoded, _, _ = model.decoder(targets=targets, target_length=target_len)
    with pytest.raises(ValueError, match="TDT is not yet implemented for non CUDA"):  # trains_on_cpu False
        model.joint(
            encoder_outputs=encoded,
            decoder_outputs=decoded,
            encoder_lengths=encoded_len,
            transcripts=targets,
            transcript_lengths=target_len,
            compute_wer=False,
        )


# --- training runs of the CPU families ------------------------------------------------------


def family_train_args(family: str, shards: Path, val: Path, run_dir: Path, tokenizer: Path, *extra: str):
    name, shrink = CPU_FAMILIES[family]
    vocabulary = ["--tokenizer", str(tokenizer)] if families.family_named(family).tokens == "bpe" else []
    return [
        "train",
        str(shards),
        "--val",
        str(val),
        "--config",
        name,
        *vocabulary,
        "--run-dir",
        str(run_dir),
        "--checkpoint-every",
        str(EVERY),
        *shrink,
        *SHORT_RUN,
        *extra,
    ]


def train_until_sigterm(argv: list[str], log_path: Path, target: int) -> tuple[int, str]:
    """Run ``asrflow`` and SIGTERM it once step ``target`` is logged: (exit code, stderr)."""
    with open(log_path, "w") as log_file:
        process = subprocess.Popen(
            [ASRFLOW, *argv], stdout=subprocess.DEVNULL, stderr=log_file, env=asrflow_env(), text=True
        )
        try:
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while process.poll() is None and time.monotonic() < deadline:
                if f"step {target}/{MAX_STEPS}" in log_path.read_text():
                    process.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.05)
            code = process.wait(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
    return code, log_path.read_text()


def check_sigterm_and_resume(argv: list[str], run_dir: Path, log_path: Path) -> tuple[dict, int]:
    """SIGTERM after the first checkpoint exits 143 having saved one; the rerun resumes there.

    Returns the finished run's card and the step it resumed from.
    """
    target = EVERY + random.Random().randint(1, 2)
    code, first = train_until_sigterm(argv, log_path, target)
    assert code == 143, f"exit {code}, SIGTERM after step {target}\n{first[-4000:]}"
    assert f"checkpoint step {EVERY} saved" in first and "SIGTERM received" in first
    killed_at = max(int(s) for s in re.findall(rf"step (\d+)/{MAX_STEPS} ", first))
    assert target <= killed_at < MAX_STEPS
    assert not (run_dir / "model.nemo").exists() and not storage.is_complete(str(run_dir))

    second = run_asrflow(*argv, timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, explain(second)
    resumed = int(re.search(r"resuming from checkpoint .* \(step (\d+)\)", second.stderr).group(1))
    assert resumed == killed_at  # the SIGTERM checkpoint: nothing recomputed
    new_steps = [int(s) for s in re.findall(rf"step (\d+)/{MAX_STEPS} ", second.stderr)]
    assert new_steps == list(range(resumed + 1, MAX_STEPS + 1))
    seeds = [re.search(r"data-order seed (\d+)", log).group(1) for log in (first, second.stderr)]
    assert seeds[0] != seeds[1]  # the resumed attempt does not replay the same batches
    assert re.search(rf"validation at step {MAX_STEPS}: val_wer [\d.]+", second.stderr)
    card = last_json_line(second.stdout)
    assert card["steps"] == MAX_STEPS and card["resumed_from_step"] == resumed
    assert json.loads((run_dir / "card.json").read_text()) == card
    return card, resumed


def check_restores_and_transcribes(model_path: Path, family: families.Family, val: Path) -> None:
    """The saved model.nemo restores as its family and transcribes with each of its heads."""
    from nemo.collections.asr.models import ASRModel

    model = ASRModel.restore_from(str(model_path), map_location="cpu")
    assert families.family_of_model(model) == family
    audio = [e["audio_filepath"] for e in manifest.read_manifest(str(val))]
    for head in family.heads:
        if family.hybrid:
            model.change_decoding_strategy(decoder_type=head, verbose=False)
        hypotheses = model.transcribe(audio, batch_size=len(audio), verbose=False)
        assert len(hypotheses) == len(audio), head
        assert all(isinstance(h if isinstance(h, str) else h.text, str) for h in hypotheses), head


@pytest.mark.parametrize("family", sorted(CPU_FAMILIES))
def test_family_trains_checkpoints_survives_sigterm_resumes_and_transcribes(
    family: str, bundled_shards: Path, short_validation: Path, bpe_tokenizer: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    argv = family_train_args(family, bundled_shards, short_validation, run_dir, bpe_tokenizer)
    card, _ = check_sigterm_and_resume(argv, run_dir, tmp_path / "first.log")
    expected = families.family_named(family)
    assert card["family"] == family and card["heads"] == list(expected.heads)
    assert card["model_class"] == expected.model_class.rpartition(".")[2]
    assert card["final_train_loss"] > 0 and card["val_wer"] is not None
    assert (card["val_wer_ctc"] is not None) == expected.hybrid
    check_restores_and_transcribes(run_dir / "model.nemo", expected, short_validation)
    if expected.hybrid:  # the curves page plots both heads' WER
        from components.train.curves import read_scalars

        scalars = read_scalars(str(run_dir / "tensorboard"))
        assert scalars.get("val_wer") and scalars.get("val_wer_ctc")


def test_rnnt_trains_with_two_rank_ddp_on_cpu(
    bundled_shards: Path, short_validation: Path, bpe_tokenizer: Path, tmp_path: Path
):
    run_dir = tmp_path / "run"
    argv = family_train_args(
        "rnnt_bpe", bundled_shards, short_validation, run_dir, bpe_tokenizer, "--devices", "2"
    )
    result = run_asrflow(*argv, timeout=RUN_TIMEOUT_S)
    assert result.returncode == 0, explain(result)
    card = last_json_line(result.stdout)
    assert (card["devices"], card["num_nodes"], card["steps"]) == (2, 1, MAX_STEPS)
    assert card["family"] == "rnnt_bpe"
    assert f"training from step 0 to {MAX_STEPS} on 2 process(es)" in result.stderr
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in result.stderr
    assert card["val_wer"] is not None

"""Training: NeMo Conformer-CTC on tarred shards, DDP, resumable checkpoints; tokenizers.

``train`` is the one entry point the CLI and the KFP component call. It resumes from the
newest complete checkpoint in ``RUN_DIR/checkpoints``, trains to ``trainer.max_steps`` with
NeMo's Lhotse dataloading, and writes ``model.nemo``, ``card.json`` and ``_SUCCESS``; a
SIGTERM before then raises :class:`~components.train.callbacks.Preempted` (exit 143), within
seconds whatever the data loader is doing. Every shard is checked before training; a shard
that cannot be read fails the run unless ``max_bad_shards`` allows it (the card then lists
it); no progress for ``stall_timeout`` seconds fails it too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import cards, manifest, storage

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")

CONF_DIR = Path(__file__).parent / "conf"
DEFAULT_STALL_TIMEOUT_S = 30 * 60.0


class TrainError(RuntimeError):
    """A training run that cannot start or go on; the message says why."""


def config_names() -> list[str]:
    """The configs that ship with asrflow (``--config NAME``)."""
    return sorted(p.stem for p in CONF_DIR.glob("*.yaml"))


def load_config(name_or_path: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Load a shipped config by name, or a YAML file (local or gs://), then apply overrides.

    Args:
        name_or_path: a name from :func:`config_names` or the path of a YAML file.
        overrides: OmegaConf dotlist items, ``key=value`` (``trainer.max_steps=100``).

    Raises:
        TrainError: unknown name, unreadable file, or a malformed override.
        ConfigError: (a TrainError) an override of a key the config lacks (``+KEY=VALUE``
            adds one), or with a value of the wrong type; see :mod:`components.train.overrides`.
    """
    from omegaconf import OmegaConf

    from components.train.overrides import checked_override

    if (CONF_DIR / f"{name_or_path}.yaml").is_file():
        text = (CONF_DIR / f"{name_or_path}.yaml").read_text()
    elif name_or_path.endswith((".yaml", ".yml")) and storage.exists(name_or_path):
        text = storage.read_text(name_or_path)
    else:
        raise TrainError(
            f"unknown config {name_or_path!r}: give one of {', '.join(config_names())} or a .yaml file"
        )
    cfg = OmegaConf.create(text)
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise TrainError(f"overrides must be key=value, got: {' '.join(bad)}")
    for item in overrides:
        key, value = checked_override(cfg, item, name_or_path)
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


def is_bpe(cfg: DictConfig) -> bool:
    """True for a sub-word config (``model.tokenizer``), False for a character one."""
    return cfg.model.get("tokenizer") is not None


def build_model(cfg: DictConfig, trainer: Any = None) -> Any:
    """A fresh, untrained Conformer-CTC model for ``cfg`` (EncDecCTCModel or ...ModelBPE).

    The data loaders are not set up here (the configs defer them); ``train`` does that once
    it knows the data paths. The model can be saved at once with ``model.save_to(path)``.
    """
    from nemo.collections.asr.models import EncDecCTCModel, EncDecCTCModelBPE

    cls = EncDecCTCModelBPE if is_bpe(cfg) else EncDecCTCModel
    return cls(cfg=cfg.model, trainer=trainer)


# --- hardware --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hardware:
    """Where and how the run trains: accelerator, processes per node, nodes, precision."""

    accelerator: str  # "gpu" or "cpu"
    devices: int
    num_nodes: int
    precision: str

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


FP16_PRECISIONS = ("16-mixed", "16-true", "16")


def precision_for(accelerator: str) -> str:
    """bf16-mixed on compute capability 8 and newer (A100, H100), 16-mixed on 7.x (V100), else 32."""
    if accelerator != "gpu":
        return "32"
    import torch

    major, _ = torch.cuda.get_device_capability()
    if major >= 8:
        return "bf16-mixed"
    if major >= 7:
        return "16-mixed"
    return "32"


def resolve_hardware(
    devices: int | None = None, num_nodes: int | None = None, precision: str | None = None
) -> Hardware:
    """Devices, nodes and precision, from the arguments, the torchrun environment, or the hardware.

    Under torchrun (``LOCAL_WORLD_SIZE`` and ``WORLD_SIZE`` set), devices per node and the
    number of nodes default to what torchrun launched, so a TrainJob needs no extra flags.
    """
    import torch

    accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    world = os.environ.get("WORLD_SIZE")
    if devices is None:
        if local_world:
            devices = int(local_world)
        else:
            devices = torch.cuda.device_count() if accelerator == "gpu" else 1
    if num_nodes is None:
        num_nodes = int(world) // int(local_world) if world and local_world else 1
    if devices < 1 or num_nodes < 1:
        raise TrainError(f"devices ({devices}) and num_nodes ({num_nodes}) must be at least 1")
    if accelerator == "cpu" and precision in FP16_PRECISIONS:
        # A GPU pool's setting reaching a CPU run (a local pipeline run): float16 autocast on
        # CPU is many times slower than float32, and gains nothing.
        log.warning("precision %s needs a GPU; training in 32 on this CPU", precision)
        precision = "32"
    return Hardware(accelerator, devices, num_nodes, precision or precision_for(accelerator))


# --- training --------------------------------------------------------------------------------


def local_work_dir(run_dir: str) -> Path:
    """Local scratch for a run: ``RUN_DIR/work`` for a local run, a temp dir for gs://."""
    if not storage.is_gcs(run_dir):
        return Path(run_dir, "work")
    root = Path(os.environ.get("ASRFLOW_SCRATCH", tempfile.gettempdir()), "asrflow")
    return root / hashlib.sha1(run_dir.encode()).hexdigest()[:12]


def _fetch(uri: str, local_dir: Path) -> str:
    """A local path for a file that may be on gs://."""
    if not storage.is_gcs(uri):
        if not Path(uri).exists():
            raise TrainError(f"not found: {uri}")
        return uri
    local = local_dir / storage.basename(uri)
    if not local.exists():
        storage.download_file(uri, local)
    return str(local)


def _fetch_dir(uri: str, local_dir: Path) -> str:
    """A local copy of a directory that may be on gs:// (a tokenizer directory)."""
    if not storage.is_gcs(uri):
        if not Path(uri).is_dir():
            raise TrainError(f"not a directory: {uri}")
        return uri
    for info in storage.list_files(uri):
        rel = info.uri[len(uri.rstrip("/")) + 1 :]
        if not (local_dir / rel).exists():
            storage.download_file(info.uri, local_dir / rel)
    return str(local_dir)


def init_from_pretrained(model: Any, nemo_path: str) -> None:
    """Copy every weight whose name and shape match from a .nemo model into ``model``.

    Weights that do not fit (a decoder for another vocabulary) keep their fresh values; the
    log says which. Raises TrainError when nothing matches (not a compatible model).
    """
    from nemo.collections.asr.models import ASRModel

    pretrained = ASRModel.restore_from(nemo_path, map_location="cpu")
    source = pretrained.state_dict()
    target = model.state_dict()
    matched = {k: v for k, v in source.items() if k in target and target[k].shape == v.shape}
    if not matched:
        raise TrainError(f"{nemo_path}: no weight fits this model's architecture")
    model.load_state_dict(matched, strict=False)
    left = sorted({k.split(".")[0] for k in target if k not in matched})
    log.info(
        "initialised %d of %d tensors from %s%s",
        len(matched),
        len(target),
        nemo_path,
        f"; fresh: {', '.join(left)}" if left else "",
    )
    del pretrained


def _configure_data(cfg: DictConfig, dataset: Any, val_manifest: str, seed: int) -> None:
    """Fill the data sections of ``cfg`` in place: paths, bucket bins, data-order seed."""
    from omegaconf import open_dict

    train_ds = cfg.model.train_ds
    with open_dict(train_ds):
        train_ds.manifest_filepath = dataset.manifest_filepath
        train_ds.tarred_audio_filepaths = dataset.tarred_audio_filepaths
        train_ds.seed = seed
        # Without workers Lhotse resolves "randomized" to a constant: use the seed itself
        # (made distinct per rank by DataSeed once the rank is known).
        if int(train_ds.get("num_workers", 0)) > 0:
            train_ds.shard_seed = "randomized"
        else:
            train_ds.shard_seed = seed
        if train_ds.get("use_bucketing", False):
            bins = train_ds.get("bucket_duration_bins") or dataset.bucket_duration_bins()
            if bins:
                train_ds.bucket_duration_bins = [float(b) for b in bins]
                train_ds.num_buckets = len(bins) + 1
                log.info(
                    "bucketing into %d buckets %s",
                    len(bins) + 1,
                    "from the config"
                    if train_ds.get("bucket_duration_bins") is bins
                    else f"from {storage.join(dataset.uri, 'metadata.yaml')}",
                )
            else:
                log.warning(
                    "no bucket_duration_bins in %s (run asrflow estimate-buckets): "
                    "training without bucketing",
                    storage.join(dataset.uri, "metadata.yaml"),
                )
                train_ds.use_bucketing = False
    with open_dict(cfg.model.validation_ds):
        cfg.model.validation_ds.manifest_filepath = val_manifest


def _make_trainer(cfg: DictConfig, hardware: Hardware, callbacks: list[Any], logger: Any, root: Path) -> Any:
    import lightning.pytorch as pl
    from lightning.pytorch.strategies import DDPStrategy
    from omegaconf import OmegaConf

    from components.train.overrides import TRAINER_SET_BY_ASRFLOW

    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    for key in TRAINER_SET_BY_ASRFLOW:
        kwargs.pop(key, None)
    if hardware.world_size > 1:
        backend = "nccl" if hardware.accelerator == "gpu" else "gloo"
        strategy: Any = DDPStrategy(process_group_backend=backend, find_unused_parameters=False)
    else:
        strategy = "auto"
    if hardware.world_size == 1 or hardware.accelerator != "gpu":
        kwargs["sync_batchnorm"] = False  # SyncBatchNorm needs CUDA
    from components.train.checkpoints import safe_checkpoint_io

    return pl.Trainer(
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        strategy=strategy,
        precision=hardware.precision,
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        max_epochs=-1,
        default_root_dir=str(root),
        plugins=[safe_checkpoint_io()],  # resume loads with weights_only=True
        **kwargs,
    )


def train(
    tarred_dir: str,
    val_manifest: str,
    run_dir: str,
    config: str = "conformer_ctc_char",
    overrides: list[str] | tuple[str, ...] = (),
    checkpoint_every: int | None = None,
    init_from: str | None = None,
    freeze_encoder: bool = False,
    tokenizer_dir: str | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
    max_bad_shards: int = 0,
    stall_timeout: float | None = DEFAULT_STALL_TIMEOUT_S,
) -> dict[str, Any]:
    """Train (or resume training) a Conformer-CTC model to ``trainer.max_steps``.

    Args:
        tarred_dir: NeMo tarred dataset from ``asrflow write-shards`` (local or gs://).
        val_manifest: NeMo manifest to validate on during training (local or gs://).
        run_dir: the run's directory: checkpoints/, tensorboard/, model.nemo, card.json.
        config: a shipped config name or a YAML path.
        overrides: ``key=value`` config overrides.
        checkpoint_every: steps between checkpoints (default: the config's).
        init_from: a .nemo model whose weights initialise a fresh run (fine-tuning).
        freeze_encoder: train only the decoder (encoder weights and statistics fixed).
        tokenizer_dir: SentencePiece directory for a BPE config (``model.tokenizer.dir``).
        devices: processes per node (GPUs, or CPU processes); default from torchrun or hardware.
        num_nodes: nodes; default from torchrun or 1.
        precision: Lightning precision; default by hardware (bf16-mixed, 16-mixed or 32).
        max_bad_shards: damaged shards training may leave out or skip (listed in the card);
            one more fails the run, naming the shard.
        stall_timeout: seconds without a training or validation batch before the run fails
            (None or 0: never).

    Returns:
        The run's card (on global rank 0; other ranks get a card with ``rank`` only).

    Raises:
        Preempted: SIGTERM before max_steps (after a best-effort checkpoint).
        TrainError: bad config, data or checkpoints; damaged shards; no progress.
    """
    import signal
    import threading

    from components.train.callbacks import Abort, Preempted

    def stop_now(signum: int, frame: Any) -> None:  # until training starts: nothing to save yet
        raise Abort(Preempted(-1, 0, None))

    in_main = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, stop_now) if in_main else None
    try:
        return _train(
            tarred_dir,
            val_manifest,
            run_dir,
            config,
            overrides,
            checkpoint_every,
            init_from,
            freeze_encoder,
            tokenizer_dir,
            devices,
            num_nodes,
            precision,
            max_bad_shards,
            stall_timeout,
        )
    except Abort as abort:
        if isinstance(abort.error, Preempted):
            raise abort.error from None
        raise TrainError(str(abort.error)) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_handler)


def _train(
    tarred_dir: str,
    val_manifest: str,
    run_dir: str,
    config: str,
    overrides: list[str] | tuple[str, ...],
    checkpoint_every: int | None,
    init_from: str | None,
    freeze_encoder: bool,
    tokenizer_dir: str | None,
    devices: int | None,
    num_nodes: int | None,
    precision: str | None,
    max_bad_shards: int,
    stall_timeout: float | None,
) -> dict[str, Any]:
    from components.train.callbacks import DataSeed, FreezeEncoder, TrainingMonitor
    from components.train.checkpoints import CheckpointError, CheckpointStore
    from components.train.data import (
        DataError,
        ShardHealth,
        data_seed,
        open_tarred_dataset,
        prepare_validation_manifest,
    )

    if storage.is_complete(run_dir):
        log.info("%s is complete (%s exists): nothing to do", run_dir, storage.SUCCESS_MARKER)
        return _echo_card(cards.read_card(run_dir))
    cfg = load_config(config, overrides)
    if tokenizer_dir:
        if not is_bpe(cfg):
            raise TrainError(f"--tokenizer given but config {config!r} is a character model")
        cfg.model.tokenizer.dir = tokenizer_dir
    work = local_work_dir(run_dir)
    work.mkdir(parents=True, exist_ok=True)
    if is_bpe(cfg):
        cfg.model.tokenizer.dir = _fetch_dir(str(cfg.model.tokenizer.dir), work / "tokenizer")
    settings = cfg.get("asrflow", {})
    checkpoint_every = checkpoint_every or int(settings.get("checkpoint_every", 1000))
    max_steps = int(cfg.trainer.max_steps)
    if max_steps < 1:
        raise TrainError("trainer.max_steps must be set (a positive number of steps)")
    hardware = resolve_hardware(devices, num_nodes, precision)

    store = CheckpointStore(storage.join(run_dir, "checkpoints"), work / "checkpoints")
    try:
        resume = store.newest_readable()
    except CheckpointError as err:
        raise TrainError(str(err)) from None
    if resume is not None:
        log.info("resuming from checkpoint %s (step %d)", resume.uri, resume.step)
        if resume.step >= max_steps:
            log.info(
                "checkpoint step %d is at max_steps %d: only the final model is left to write",
                resume.step,
                max_steps,
            )
    else:
        log.info("no checkpoint in %s: starting at step 0", store.root)
    start_step = resume.step if resume else 0
    base_seed = int(settings.get("seed", 1234))
    seed = data_seed(base_seed, start_step)
    if max_bad_shards < 0:
        raise TrainError(f"--max-bad-shards must be 0 or more, got {max_bad_shards}")
    try:
        dataset = open_tarred_dataset(tarred_dir, str(work / "data"), max_bad_shards=max_bad_shards)
        val_local, val_utterances, val_hours = prepare_validation_manifest(
            val_manifest, str(work / "validation")
        )
    except DataError as err:
        raise TrainError(str(err)) from None
    _configure_data(cfg, dataset, val_local, seed)
    log.info(
        "data: %d shards in %s%s%s; validation: %d utterances (%.2f h) from %s; data-order seed %d",
        dataset.num_shards,
        tarred_dir,
        f" ({len(dataset.bad_shards)} damaged, left out)" if dataset.bad_shards else "",
        f" ({dataset.hours():.2f} h)" if dataset.hours() is not None else "",
        val_utterances,
        val_hours,
        val_manifest,
        seed,
    )

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    for name in ("lightning.pytorch", "lightning.fabric"):  # one handler (ours): no doubled lines
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    pl.seed_everything(base_seed, workers=True, verbose=False)
    tb_dir = Path(run_dir) if not storage.is_gcs(run_dir) else work
    logger = TensorBoardLogger(save_dir=str(tb_dir), name="tensorboard", version="", default_hp_metric=False)
    health = ShardHealth(dataset, max_bad_shards, work / "data" / f"skips-{os.getpid()}.jsonl")
    monitor = TrainingMonitor(
        store,
        checkpoint_every=checkpoint_every,
        log_every=int(settings.get("log_every", 50)),
        max_steps=max_steps,
        sample_rate=int(cfg.model.sample_rate),
        keep_checkpoints=int(settings.get("keep_checkpoints", 3)),
        after_checkpoint=(lambda: _upload_tree(work / "tensorboard", storage.join(run_dir, "tensorboard")))
        if storage.is_gcs(run_dir)
        else None,
        stall_timeout=stall_timeout,
        health=health,
    )
    callbacks: list[Any] = [DataSeed(seed), monitor]
    if freeze_encoder:
        callbacks.append(FreezeEncoder())
    trainer = _make_trainer(cfg, hardware, callbacks, logger, work)
    log.info(
        "trainer: %s, %d device(s) x %d node(s), precision %s, max_steps %d, checkpoint every %d",
        hardware.accelerator,
        hardware.devices,
        hardware.num_nodes,
        hardware.precision,
        max_steps,
        checkpoint_every,
    )

    model = build_model(cfg, trainer)
    if init_from and resume is None:
        init_from_pretrained(model, _fetch(init_from, work / "init"))
    elif init_from:
        log.info("--init-from %s not used: the weights come from the checkpoint", init_from)
    if freeze_encoder:
        model.encoder.freeze()
        log.info(
            "encoder frozen: training %d of %d parameters",
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            sum(p.numel() for p in model.parameters()),
        )

    started = time.monotonic()
    health.install()
    try:
        trainer.fit(model, ckpt_path=resume.local_path if resume else None)
        data_health = health.summary()
    except Exception as err:
        fatal = health.fatal()  # from a dataloader worker it arrives wrapped in a traceback
        if fatal or isinstance(err, DataError):
            raise TrainError(fatal or str(err)) from None
        raise
    finally:
        monitor.close()
        health.close()
    _ignore_sigterm_while_finishing()
    if trainer.global_step < max_steps:
        raise TrainError(f"training ended at step {trainer.global_step} of {max_steps} (see the log above)")
    if monitor.val_step != trainer.global_step:
        trainer.validate(model, verbose=False)
    if not trainer.is_global_zero:
        return {"rank": trainer.global_rank}
    card = _finish(
        run_dir,
        work,
        model,
        cfg,
        config,
        hardware,
        monitor,
        trainer.global_step,
        start_step,
        dataset,
        time.monotonic() - started,
        data_health,
    )
    if storage.is_gcs(run_dir):
        _upload_tree(work / "tensorboard", storage.join(run_dir, "tensorboard"))
    return card


def _ignore_sigterm_while_finishing() -> None:
    """After the last step: a SIGTERM lets the final validation and model files finish."""
    import signal

    def finish_first(signum: int, frame: Any) -> None:
        log.warning("SIGTERM after the last step: finishing model.nemo and the card first")

    signal.signal(signal.SIGTERM, finish_first)


def _echo_card(card: dict[str, Any]) -> dict[str, Any]:
    """Print an existing card as the last stdout line, as a fresh run would."""
    sys.stdout.flush()
    print(json.dumps(card, sort_keys=True, ensure_ascii=False), flush=True)
    return card


def _upload_tree(local_dir: Path, uri: str) -> None:
    """Copy a local directory's files to ``uri`` (overwriting: TensorBoard files grow)."""
    if not local_dir.is_dir():
        return
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(uri, str(path.relative_to(local_dir))), overwrite=True)


def _finish(
    run_dir: str,
    work: Path,
    model: Any,
    cfg: DictConfig,
    config: str,
    hardware: Hardware,
    monitor: Any,
    steps: int,
    start_step: int,
    dataset: Any,
    wall_seconds: float,
    data_health: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write model.nemo, card.json and _SUCCESS (in that order) on global rank 0."""
    model_uri = storage.join(run_dir, "model.nemo")
    local_model = (
        work / "model.nemo" if storage.is_gcs(run_dir) else Path(run_dir, f"{storage.TEMP_PREFIX}model.nemo")
    )
    model.save_to(str(local_model))
    if storage.is_gcs(run_dir):
        storage.delete(model_uri)  # left by an attempt that died before _SUCCESS: not final
        storage.upload_file(local_model, model_uri)  # create-only, checksummed
        local_model.unlink()
    else:
        os.replace(local_model, model_uri)
    card = {
        "model": model_uri,
        "run_dir": run_dir,
        "config": config,
        "model_class": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "steps": steps,
        "max_steps": int(cfg.trainer.max_steps),
        "resumed_from_step": start_step,
        "hours_seen": round(monitor.hours_seen, 4),
        "final_train_loss": monitor.window_loss if monitor.window_loss is not None else monitor.last_loss,
        "val_wer": monitor.val_wer,
        "throughput_audio_s_per_s": round(monitor.attempt_throughput, 2),
        "train_wall_seconds": round(wall_seconds, 1),
        "dataset": dataset.uri,
        "dataset_hours": dataset.hours(),
        **(data_health or {"bad_shards": [], "bad_shard_hours": 0.0, "skipped_utterances": 0}),
        "accelerator": hardware.accelerator,
        "devices": hardware.devices,
        "num_nodes": hardware.num_nodes,
        "precision": hardware.precision,
    }
    cards.write_card(run_dir, card)
    storage.mark_complete(run_dir)
    log.info(
        "done: %s (step %d, val_wer %s)",
        model_uri,
        steps,
        f"{monitor.val_wer:.4f}" if monitor.val_wer is not None else "n/a",
    )
    return card


# --- tokenizer -------------------------------------------------------------------------------


def _training_texts(source: str) -> tuple[str, list[str]]:
    """The manifest a tokenizer learns from, and its texts after the shared normalisation."""
    uri = source
    if not source.endswith((".json", ".jsonl")):
        uri = storage.join(source, "tarred_audio_manifest.json")
        if not storage.exists(uri):
            raise TrainError(
                f"{source}: neither a manifest nor a tarred directory with tarred_audio_manifest.json"
            )
    texts = []
    try:
        for entry in manifest.read_manifest(uri):
            text = manifest.normalize_text(entry["text"])
            if text:
                texts.append(text)
    except manifest.ManifestError as err:
        raise TrainError(str(err)) from None
    except FileNotFoundError:
        raise TrainError(f"manifest not found: {uri}") from None
    if not texts:
        raise TrainError(f"{uri}: no text to learn a tokenizer from")
    return uri, texts


def train_tokenizer(
    source: str, out: str, vocab_size: int = 256, model_type: str = "bpe", seed: int = 0
) -> dict[str, Any]:
    """Train a SentencePiece tokenizer (NeMo's ``create_spt_model``) on the normalised texts.

    Args:
        source: a tarred directory (its tarred_audio_manifest.json) or a NeMo manifest.
        out: output directory (local or gs://): tokenizer.model, vocab.txt, card.json, _SUCCESS.
        vocab_size: SentencePiece vocabulary size (a soft limit for small corpora).
        model_type: "bpe" or "unigram".
        seed: SentencePiece's random seed (same text and seed: the same tokenizer bytes).

    Returns:
        The card: tokenizer directory, vocabulary size, sentences and characters used.
    """
    import sentencepiece
    from nemo.collections.common.tokenizers.sentencepiece_tokenizer import create_spt_model

    if storage.is_complete(out):
        log.info("%s is complete: nothing to do", out)
        return _echo_card(cards.read_card(out))
    manifest_uri, texts = _training_texts(source)
    target = out if storage.is_gcs(out) else str(Path(out).resolve())  # the body below changes directory
    with tempfile.TemporaryDirectory(prefix="asrflow-tokenizer-") as tmp, contextlib.chdir(tmp):
        # Relative paths: SentencePiece stores its input and output paths in the model file.
        Path("text.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
        sentencepiece.set_random_generator_seed(seed)  # it shuffles the input: same seed, same model
        create_spt_model(
            "text.txt",
            vocab_size=vocab_size,
            sample_size=-1,
            do_lower_case=False,
            tokenizer_type=model_type,
            output_dir="tokenizer",
            remove_extra_whitespaces=True,
        )
        built = Path(tmp, "tokenizer")
        vocab = Path(built, "vocab.txt").read_text(encoding="utf-8").splitlines()
        for name in ("tokenizer.model", "tokenizer.vocab", "vocab.txt"):
            storage.upload_file(built / name, storage.join(target, name), overwrite=True)
    card = {
        "tokenizer_dir": out,
        "tokenizer_model": storage.join(out, "tokenizer.model"),
        "type": model_type,
        "vocab_size": len(vocab) + 1,  # vocab.txt leaves out <unk>
        "requested_vocab_size": vocab_size,
        "sentences": len(texts),
        "characters": sum(len(t) for t in texts),
        "source": manifest_uri,
        "seed": seed,
    }
    cards.write_card(out, card)
    storage.mark_complete(out)
    return card


# --- launching: the command line for KFP tasks and TrainJobs -----------------------------------


def run_dir_for(data_root: str, run_id: str) -> str:
    """``DATA_ROOT/runs/<run_id>``: where a pipeline run's training writes."""
    return storage.join(data_root, "runs", run_id)


def train_argv(
    tarred_dir: str,
    val_manifest: str,
    run_dir: str,
    config: str = "conformer_ctc_char",
    overrides: list[str] | tuple[str, ...] = (),
    checkpoint_every: int | None = None,
    init_from: str | None = None,
    freeze_encoder: bool = False,
    tokenizer_dir: str | None = None,
    devices: int | None = None,
    num_nodes: int | None = None,
    precision: str | None = None,
    max_steps: int | None = None,
    seed: int | None = None,
    bucket_bins: list[float] | tuple[float, ...] = (),
    max_bad_shards: int | None = None,
    stall_timeout_minutes: float | None = None,
) -> list[str]:
    """The arguments after ``asrflow`` that run :func:`train` with these settings.

    ``max_steps``, ``seed`` and ``bucket_bins`` become the overrides ``trainer.max_steps``,
    ``asrflow.seed`` and ``model.train_ds.bucket_duration_bins`` (before the explicit
    ``overrides``, which win). The pipeline passes estimate-buckets' output as
    ``bucket_bins``: the bins reach training as an input, whatever a later rerun of another
    step does to the dataset's metadata.yaml.

    A KFP task runs this command in a child process (Lightning starts DDP ranks by
    re-running the command line, which must be ``asrflow train``, not the KFP executor); a
    multi-node TrainJob runs it under torchrun on every node (devices and nodes then come
    from torchrun's environment, so leave them None).
    """
    argv = ["train", tarred_dir, "--val", val_manifest, "--config", config, "--run-dir", run_dir]
    if checkpoint_every:
        argv += ["--checkpoint-every", str(checkpoint_every)]
    if init_from:
        argv += ["--init-from", init_from]
    if freeze_encoder:
        argv.append("--freeze-encoder")
    if tokenizer_dir:
        argv += ["--tokenizer", tokenizer_dir]
    if devices:
        argv += ["--devices", str(devices)]
    if num_nodes:
        argv += ["--num-nodes", str(num_nodes)]
    if precision:
        argv += ["--precision", precision]
    if max_bad_shards is not None:
        argv += ["--max-bad-shards", str(max_bad_shards)]
    if stall_timeout_minutes is not None:
        argv += ["--stall-timeout", repr(float(stall_timeout_minutes))]
    bad = [item for item in overrides if "=" not in item]
    if bad:
        raise TrainError(f"overrides must be key=value, got: {' '.join(bad)}")
    if max_steps:
        argv.append(f"trainer.max_steps={max_steps}")
    if seed is not None:
        argv.append(f"asrflow.seed={seed}")
    if bucket_bins:
        argv.append(f"model.train_ds.bucket_duration_bins=[{','.join(repr(float(b)) for b in bucket_bins)}]")
    return argv + list(overrides)


def run_asrflow(argv: list[str]) -> int:
    """Run ``asrflow ARGV`` as a child process; its output is ours; SIGTERM is passed on.

    Returns the child's exit status (143 for a preempted training run), so a KFP task can
    exit with it.
    """
    import signal
    import subprocess

    command = [sys.executable, "-m", "components.train", *argv]
    # the task log is read by people debugging a failed task: keep the traceback there
    env = {**os.environ, "ASRFLOW_DEBUG": os.environ.get("ASRFLOW_DEBUG", "1")}
    child = subprocess.Popen(command, env=env)

    def forward(signum: int, frame: Any) -> None:
        child.send_signal(signum)

    previous = signal.signal(signal.SIGTERM, forward)
    try:
        return child.wait()
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_run_outputs(run_dir: str, card_path: str, curves_path: str) -> dict[str, Any]:
    """After a finished run: its card as a JSON artifact and its curves as an HTML page.

    Both KFP training steps (one node, or a TrainJob on several) end with this; returns the
    card.
    """
    from components.train.curves import curves_html

    card = cards.read_card(run_dir)
    with open(card_path, "w", encoding="utf-8") as out:
        json.dump(card, out, sort_keys=True, indent=2)
    with open(curves_path, "w", encoding="utf-8") as out:
        out.write(curves_html(run_dir))
    return card

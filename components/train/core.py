"""A training run: a NeMo speech model (CTC, RNN-T, TDT, hybrid) on tarred shards, DDP, resumable checkpoints.

:func:`train` is the one entry point the CLI calls (KFP tasks and TrainJobs run the CLI). It
resumes from the newest complete checkpoint in ``RUN_DIR/checkpoints``, trains to
``trainer.max_steps`` with NeMo's Lhotse dataloading, and writes ``model.nemo``,
``card.json`` and ``_SUCCESS``; a SIGTERM before then raises
:class:`~components.train.callbacks.Preempted` (exit 143), within seconds whatever the data
loader is doing. Every shard is checked before training; a shard that cannot be read fails
the run unless ``max_bad_shards`` allows it (the card then lists it); no progress for
``stall_timeout`` fails it too.

The pieces live beside it: settings (:mod:`.settings`), configs (:mod:`.config`), the model
(:mod:`.model`), hardware and the Trainer (:mod:`.hardware`), data (:mod:`.data`),
checkpoints (:mod:`.checkpoints`), callbacks (:mod:`.callbacks`), the card (:mod:`.card`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from components import cards, layout, storage
from components.train import finetune, staging
from components.train.card import TrainCard, echo
from components.train.config import configure_data, is_bpe, load_config
from components.train.curves import TENSORBOARD_DIR
from components.train.errors import TrainError
from components.train.hardware import Hardware, make_trainer, resolve_hardware
from components.train.model import build_model
from components.train.settings import TrainSettings

if TYPE_CHECKING:
    from omegaconf import DictConfig

log = logging.getLogger("asrflow.train")


def train(settings: TrainSettings) -> dict[str, Any]:
    """Train (or resume training) a NeMo speech model to ``trainer.max_steps``.

    Args:
        settings: what to train on, where to write, and how (see :class:`TrainSettings`).

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
        return _train(settings)
    except Abort as abort:
        if isinstance(abort.error, Preempted):
            raise abort.error from None
        raise TrainError(str(abort.error)) from None
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous_handler)


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """The model ``--init-from`` names, made local, and the vocabulary the run gives it."""

    nemo_path: str
    tokenizer_dir: str | None  # local; None: the model keeps its own tokenizer
    labels: list[str] | None  # a character run config's labels


@dataclasses.dataclass(frozen=True)
class Start:
    """Where an attempt starts: the checkpoint it resumes (None: step 0) and its seeds."""

    store: Any  # CheckpointStore
    resume: Any  # Checkpoint | None
    base_seed: int
    data_seed: int

    @property
    def step(self) -> int:
        return self.resume.step if self.resume else 0


def _train(settings: TrainSettings) -> dict[str, Any]:
    from components.train.callbacks import DataSeed, FreezeEncoder, SourceTally
    from components.train.data import DataError
    from components.train.rnnt_loss import use_fast_cpu_rnnt_loss

    run_dir = settings.run_dir
    if storage.is_complete(run_dir):
        log.info("%s is complete (%s exists): nothing to do", run_dir, layout.SUCCESS_MARKER)
        return echo(cards.read_card(run_dir))
    work = staging.local_work_dir(run_dir)
    cfg = _run_config(settings, work)
    pretrained = _pretrained(settings, cfg, work)
    max_steps = int(cfg.trainer.max_steps)
    checkpoint_every = settings.checkpoint_every or int(cfg.get("asrflow", {}).get("checkpoint_every", 1000))
    hardware = resolve_hardware(settings.devices, settings.num_nodes, settings.precision)
    start = _start(run_dir, work, cfg, max_steps)
    dataset = _configure_data(settings, cfg, work, start.data_seed)

    import lightning.pytorch as pl

    for name in ("lightning.pytorch", "lightning.fabric"):  # one handler (ours): no doubled lines
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    pl.seed_everything(start.base_seed, workers=True, verbose=False)
    tally = SourceTally(len(settings.mix) + 1) if settings.mix else None
    monitor, health = _monitor(settings, cfg, work, start, dataset, checkpoint_every, max_steps, tally)
    callbacks: list[Any] = [DataSeed(start.data_seed), *([tally] if tally else []), monitor]
    if settings.freeze_encoder:
        callbacks.append(FreezeEncoder(settings.train_last_layers))
    trainer = make_trainer(cfg, hardware, callbacks, _tensorboard(run_dir, work), work)
    log.info(
        "trainer: %s, %d device(s) x %d node(s), precision %s, max_steps %d, checkpoint every %d",
        hardware.accelerator,
        hardware.devices,
        hardware.num_nodes,
        hardware.precision,
        max_steps,
        checkpoint_every,
    )
    model = _model(settings, cfg, trainer, pretrained, work, resumed=start.resume is not None)
    use_fast_cpu_rnnt_loss(model, hardware.accelerator)

    started = time.monotonic()
    health.install()
    try:
        trainer.fit(model, ckpt_path=start.resume.local_path if start.resume else None)
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
    wall_seconds = round(time.monotonic() - started, 1)
    model_uri = _save_model(model, run_dir, work)
    card = _card(
        settings,
        cfg,
        model,
        model_uri,
        hardware,
        monitor,
        dataset,
        data_health,
        steps=trainer.global_step,
        start_step=start.step,
        wall_seconds=wall_seconds,
    )
    card.write()
    storage.mark_complete(run_dir)
    log.info(
        "done: %s (step %d, val_wer %s)",
        card.model,
        card.steps,
        f"{card.val_wer:.4f}" if card.val_wer is not None else "n/a",
    )
    if storage.is_gcs(run_dir):
        staging.upload_tree(work / TENSORBOARD_DIR, storage.join(run_dir, TENSORBOARD_DIR))
    return card.to_dict()


def _run_config(settings: TrainSettings, work: Path) -> DictConfig:
    """The run's config: loaded, overridden, its tokenizer local; the work directory made.

    A fine-tuning run without ``--tokenizer`` keeps its model's own tokenizer, so the
    config's ``model.tokenizer.dir`` is not needed then.
    """
    cfg = load_config(settings.config, settings.config_overrides())
    if settings.tokenizer_dir and not is_bpe(cfg) and not settings.init_from:
        raise TrainError(f"--tokenizer given but config {settings.config!r} is a character model")
    work.mkdir(parents=True, exist_ok=True)
    if settings.tokenizer_dir:
        local = staging.fetch_dir(settings.tokenizer_dir, work / "tokenizer")
        if is_bpe(cfg):
            cfg.model.tokenizer.dir = local
    elif is_bpe(cfg) and not settings.init_from:
        cfg.model.tokenizer.dir = staging.fetch_dir(str(cfg.model.tokenizer.dir), work / "tokenizer")
    if int(cfg.trainer.max_steps) < 1:
        raise TrainError("trainer.max_steps must be set (a positive number of steps)")
    return cfg


def _pretrained(settings: TrainSettings, cfg: DictConfig, work: Path) -> Pretrained | None:
    """For ``--init-from``: the local .nemo, and ``cfg.model`` made its fine-tuning config.

    Also on resume: the checkpoint holds the weights of this architecture and vocabulary.
    """
    if not settings.init_from:
        return None
    if cfg.asrflow.get("init_encoder_from"):
        raise TrainError("--init-from and asrflow.init_encoder_from both start the model: give one")
    nemo_path = finetune.resolve_pretrained(settings.init_from, work)
    labels = finetune.fine_tuning_config(cfg, finetune.pretrained_config(nemo_path, settings.init_from))
    tokenizer_dir = (
        staging.fetch_dir(settings.tokenizer_dir, work / "tokenizer") if settings.tokenizer_dir else None
    )
    return Pretrained(nemo_path, tokenizer_dir, labels)


def _start(run_dir: str, work: Path, cfg: DictConfig, max_steps: int) -> Start:
    """The newest readable checkpoint to resume from, and this attempt's seeds."""
    from components.train.checkpoints import CheckpointError, CheckpointStore
    from components.train.data import data_seed

    store = CheckpointStore(storage.join(run_dir, layout.CHECKPOINTS_DIR), work / layout.CHECKPOINTS_DIR)
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
    base_seed = int(cfg.get("asrflow", {}).get("seed", 1234))
    return Start(store, resume, base_seed, data_seed(base_seed, resume.step if resume else 0))


def _configure_data(settings: TrainSettings, cfg: DictConfig, work: Path, seed: int) -> Any:
    """Check the shards and the validation manifest, and put them into ``cfg``; the dataset."""
    from components.train.data import (
        DataError,
        open_mixture,
        open_tarred_dataset,
        prepare_validation_manifest,
    )

    try:
        if settings.mix:
            dataset = open_mixture(
                [(source.uri, source.weight) for source in settings.sources()],
                str(work / "data"),
                max_bad_shards=settings.max_bad_shards,
                temperature=settings.mix_temperature,
            )
        else:
            dataset = open_tarred_dataset(
                settings.tarred_dir, str(work / "data"), max_bad_shards=settings.max_bad_shards
            )
        val_local, val_utterances, val_hours = prepare_validation_manifest(
            settings.val_manifest, str(work / "validation")
        )
    except DataError as err:
        raise TrainError(str(err)) from None
    configure_data(cfg, dataset, val_local, seed)
    log.info(
        "data: %d shards in %s%s%s; validation: %d utterances (%.2f h) from %s; data-order seed %d",
        dataset.num_shards,
        settings.tarred_dir,
        f" ({len(dataset.bad_shards)} damaged, left out)" if dataset.bad_shards else "",
        f" ({dataset.hours():.2f} h)" if dataset.hours() is not None else "",
        val_utterances,
        val_hours,
        settings.val_manifest,
        seed,
    )
    if settings.mix:
        for source, share in zip(dataset.datasets, dataset.probabilities(), strict=True):
            log.info(
                "mixture: %.1f%% of the utterances from %s (%d shards)",
                100 * share,
                source.uri,
                source.num_shards,
            )
    return dataset


def _monitor(
    settings: TrainSettings,
    cfg: DictConfig,
    work: Path,
    start: Start,
    dataset: Any,
    checkpoint_every: int,
    max_steps: int,
    tally: Any = None,
) -> tuple[Any, Any]:
    """The training monitor (logs, checkpoints, stalls) and the shard health it reports."""
    from components.train.callbacks import TrainingMonitor
    from components.train.data import ShardHealth

    run_dir = settings.run_dir
    asrflow = cfg.get("asrflow", {})
    health = ShardHealth(dataset, settings.max_bad_shards, work / "data" / f"skips-{os.getpid()}.jsonl")
    monitor = TrainingMonitor(
        start.store,
        checkpoint_every=checkpoint_every,
        log_every=int(asrflow.get("log_every", 50)),
        max_steps=max_steps,
        sample_rate=int(cfg.model.sample_rate),
        keep_checkpoints=int(asrflow.get("keep_checkpoints", 3)),
        after_checkpoint=(
            lambda: staging.upload_tree(work / TENSORBOARD_DIR, storage.join(run_dir, TENSORBOARD_DIR))
        )
        if storage.is_gcs(run_dir)
        else None,
        stall_timeout=settings.stall_timeout_s,
        health=health,
        sources=tally,
    )
    return monitor, health


def _tensorboard(run_dir: str, work: Path) -> Any:
    """TensorBoard logs in ``RUN_DIR/tensorboard`` (local scratch first for gs://)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    save_dir = Path(run_dir) if not storage.is_gcs(run_dir) else work
    return TensorBoardLogger(
        save_dir=str(save_dir), name=TENSORBOARD_DIR, version="", default_hp_metric=False
    )


def _model(
    settings: TrainSettings,
    cfg: DictConfig,
    trainer: Any,
    pretrained: Pretrained | None,
    work: Path,
    resumed: bool,
) -> Any:
    """The model to fit: fresh (its encoder from ``asrflow.init_encoder_from`` if set), or the
    ``--init-from`` model (:mod:`.finetune`); encoder frozen if asked."""
    if pretrained is None:
        model = build_model(cfg, trainer)
        encoder_from = cfg.asrflow.get("init_encoder_from")
        if encoder_from and not resumed:  # on resume the checkpoint brings every weight
            finetune.init_encoder(model, str(encoder_from), work)
    else:
        model = finetune.load_pretrained(
            cfg, pretrained.nemo_path, trainer, pretrained.tokenizer_dir, pretrained.labels
        )
        if resumed:
            log.info(
                "--init-from %s gives the architecture; the weights come from the checkpoint",
                settings.init_from,
            )
    if settings.freeze_encoder:
        finetune.freeze_encoder(model, settings.train_last_layers)
    if pretrained is not None:
        fine_tuning = _fine_tuning(settings, model)
        log.info("fine-tuning %s", ", ".join(f"{key}: {value}" for key, value in fine_tuning.items()))
    return model


def _fine_tuning(settings: TrainSettings, model: Any) -> dict[str, Any] | None:
    """What a fine-tuning run started from (None when the model was trained anew)."""
    if not settings.init_from:
        return None
    return finetune.summary(
        settings.init_from, settings.tokenizer_dir, settings.freeze_encoder, settings.train_last_layers, model
    )


def _ignore_sigterm_while_finishing() -> None:
    """After the last step: a SIGTERM lets the final validation and model files finish."""
    import signal

    def finish_first(signum: int, frame: Any) -> None:
        log.warning("SIGTERM after the last step: finishing %s and the card first", layout.MODEL_NAME)

    signal.signal(signal.SIGTERM, finish_first)


def _save_model(model: Any, run_dir: str, work: Path) -> str:
    """Write ``RUN_DIR/model.nemo`` atomically (temp name then rename, or a create-only upload)."""
    model_uri = storage.join(run_dir, layout.MODEL_NAME)
    local_model = (
        work / layout.MODEL_NAME
        if storage.is_gcs(run_dir)
        else Path(run_dir, f"{storage.TEMP_PREFIX}{layout.MODEL_NAME}")
    )
    model.save_to(str(local_model))
    if storage.is_gcs(run_dir):
        storage.delete(model_uri)  # left by an attempt that died before _SUCCESS: not final
        storage.upload_file(local_model, model_uri)  # create-only, checksummed
        local_model.unlink()
    else:
        os.replace(local_model, model_uri)
    return model_uri


def _card(
    settings: TrainSettings,
    cfg: DictConfig,
    model: Any,
    model_uri: str,
    hardware: Hardware,
    monitor: Any,
    dataset: Any,
    data_health: dict[str, Any],
    *,
    steps: int,
    start_step: int,
    wall_seconds: float,
) -> TrainCard:
    """The card of a finished run whose model is written."""
    from components.train.families import family_of_model, heads_of_model

    family = family_of_model(model)  # the model's: --init-from may bring another family's
    return TrainCard(
        out_dir=settings.run_dir,
        model=model_uri,
        config=settings.config,
        model_class=type(model).__name__,
        family=family.name if family else None,
        heads=list(heads_of_model(model)),
        parameters=sum(p.numel() for p in model.parameters()),
        steps=steps,
        max_steps=int(cfg.trainer.max_steps),
        resumed_from_step=start_step,
        hours_seen=round(monitor.hours_seen, 4),
        final_train_loss=monitor.window_loss if monitor.window_loss is not None else monitor.last_loss,
        val_wer=monitor.val_wer,
        val_wer_ctc=monitor.val_wer_ctc,
        throughput_audio_s_per_s=round(monitor.attempt_throughput, 2),
        train_wall_seconds=wall_seconds,
        dataset=dataset.uri,
        dataset_hours=dataset.hours(),
        mixture=_mixture_seen(settings, dataset, monitor),
        mix_temperature=settings.mix_temperature if settings.mix else None,
        fine_tuning=_fine_tuning(settings, model),
        **data_health,
        accelerator=hardware.accelerator,
        devices=hardware.devices,
        num_nodes=hardware.num_nodes,
        precision=hardware.precision,
    )


def _mixture_seen(settings: TrainSettings, dataset: Any, monitor: Any) -> list[dict[str, Any]]:
    """The card's account of a mixture, a source each: weight, share, hours and utterances seen."""
    if not settings.mix:
        return []
    total_hours = sum(monitor.source_seconds) / 3600 or 1.0
    total_utterances = sum(monitor.source_utterances) or 1.0
    return [
        {
            "dataset": source.uri,
            "weight": weight,
            "share": round(share, 6),
            "dataset_hours": source.hours(),
            "hours_seen": round(seconds / 3600, 6),
            "utterances_seen": round(utterances, 3),
            "hours_seen_share": round(seconds / 3600 / total_hours, 6),
            "utterances_seen_share": round(utterances / total_utterances, 6),
        }
        for source, weight, share, seconds, utterances in zip(
            dataset.datasets,
            dataset.weights,
            dataset.probabilities(),
            monitor.source_seconds,
            monitor.source_utterances,
            strict=True,
        )
    ]

"""Lightning callbacks for asrflow training: log lines, step checkpoints, SIGTERM, freezing.

Lightning 2.4 turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with no code, so a
preempted process would exit 0, and NeMo's preemption callback exits 0 too. KFP would then
take a preempted step for a finished one. :class:`TrainingMonitor` replaces the SIGTERM
handler once training starts: the signal sets a flag, all ranks agree on it at the end of
the step (one all-reduce that also carries the step's loss and audio seconds), save a
checkpoint together and raise :class:`Preempted`, which the CLI turns into exit code 143.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from components.progress import format_seconds
from components.train.checkpoints import CheckpointStore

log = logging.getLogger("asrflow.train")

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM


class Preempted(Exception):
    """Training stopped by SIGTERM before max_steps; the process must exit non-zero."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, max_steps: int, checkpoint: str | None) -> None:
        saved = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint"
        super().__init__(f"stopped by SIGTERM at step {step} of {max_steps} ({saved}); rerun to resume")
        self.step = step


class TrainingMonitor(Callback):
    """Plain log lines, step checkpoints and SIGTERM handling for one run.

    Every ``log_every`` steps global rank 0 logs one line with the step, train loss (mean
    over ranks), learning rate, throughput in audio-seconds per second (all ranks, without
    validation and checkpoint time), audio hours seen and an ETA. After each validation it
    logs the WER over the whole validation set (summed over ranks).

    Args:
        store: where checkpoints go.
        checkpoint_every: save every this many optimizer steps.
        log_every: one log line every this many steps.
        max_steps: the run's target, for progress and ETA.
        sample_rate: to turn audio lengths in samples into seconds.
        keep_checkpoints: complete checkpoints kept; older ones are deleted.
        after_checkpoint: called on rank 0 after each checkpoint (e.g. copy TensorBoard files).
    """

    def __init__(
        self,
        store: CheckpointStore,
        checkpoint_every: int,
        log_every: int,
        max_steps: int,
        sample_rate: int,
        keep_checkpoints: int = 3,
        after_checkpoint: Callable[[], None] | None = None,
    ) -> None:
        if checkpoint_every < 1 or log_every < 1:
            raise ValueError("checkpoint_every and log_every must be at least 1")
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.max_steps = max_steps
        self.sample_rate = sample_rate
        self.keep_checkpoints = keep_checkpoints
        self.after_checkpoint = after_checkpoint
        # carried over a resume through the checkpoint (state_dict)
        self.audio_seconds_total = 0.0
        # this attempt
        self.stop_requested = False
        self.start_step = 0
        self.last_saved_step = -1
        self.last_checkpoint: str | None = None
        self.attempt_audio_seconds = 0.0
        self.attempt_train_seconds = 0.0
        self.last_loss: float | None = None
        self.window_loss: float | None = None  # mean over the steps of the last log line
        self.val_wer: float | None = None
        self.val_loss: float | None = None
        self.val_step: int | None = None
        self._window = _Window()
        self._paused_at: float | None = None
        self._saving = False
        self._val_sums: list[float] = [0.0, 0.0, 0.0, 0.0]

    # --- state carried in checkpoints ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"audio_seconds_total": self.audio_seconds_total}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.audio_seconds_total = float(state_dict.get("audio_seconds_total", 0.0))

    @property
    def hours_seen(self) -> float:
        return self.audio_seconds_total / 3600

    # --- SIGTERM ---------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.start_step = trainer.global_step
        self.last_saved_step = trainer.global_step
        if trainer.received_sigterm:
            self.stop_requested = True
        launcher = trainer.strategy.launcher

        def on_sigterm(signum: int, frame: Any) -> None:
            if not self.stop_requested and launcher is not None and trainer.is_global_zero:
                launcher.kill(signum)  # DDP children started by Lightning get it from rank 0
            self.stop_requested = True

        signal.signal(signal.SIGTERM, on_sigterm)
        self._window.restart()
        if trainer.is_global_zero:
            log.info(
                "training from step %d to %d on %d process(es)",
                self.start_step,
                self.max_steps,
                trainer.world_size,
            )

    # --- steps -----------------------------------------------------------------------------

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        audio_seconds = float(batch[1].sum().item()) / self.sample_rate
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss_value = float(loss.detach().float().item()) if loss is not None else float("nan")
        sums = _all_reduce(trainer, [audio_seconds, loss_value, float(self.stop_requested)])
        audio_all, loss_mean, stop = sums[0], sums[1] / trainer.world_size, sums[2] > 0
        self.audio_seconds_total += audio_all
        self.attempt_audio_seconds += audio_all
        self.last_loss = loss_mean
        self._window.add(audio_all, loss_mean)
        step = trainer.global_step
        if step % self.log_every == 0 or step >= self.max_steps or stop:
            self._log_step(trainer, step)
        if stop:
            if trainer.is_global_zero:
                log.warning("SIGTERM received: saving a checkpoint at step %d and stopping", step)
            checkpoint = (
                self._checkpoint(trainer, step) if step > self.last_saved_step else self.last_checkpoint
            )
            raise Preempted(step, self.max_steps, checkpoint)
        if step % self.checkpoint_every == 0 and step > self.last_saved_step and step < self.max_steps:
            self._checkpoint(trainer, step)

    def _log_step(self, trainer: Trainer, step: int) -> None:
        seconds, audio, loss = self._window.take()
        self.attempt_train_seconds += seconds
        self.window_loss = loss
        if not trainer.is_global_zero:
            return
        rate = audio / seconds if seconds > 0 else 0.0
        lr = trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else float("nan")
        done = step - self.start_step
        overall = (
            self.attempt_audio_seconds / self.attempt_train_seconds if self.attempt_train_seconds else 0.0
        )
        eta = ""
        if done > 0 and self.attempt_train_seconds > 0 and step < self.max_steps:
            eta = f" ETA {format_seconds((self.max_steps - step) * self.attempt_train_seconds / done)}"
        log.info(
            "step %d/%d (%.0f%%) loss %.4f lr %.3g audio/s %.1f (avg %.1f) hours seen %.3f%s",
            step,
            self.max_steps,
            100 * step / self.max_steps,
            loss,
            lr,
            rate,
            overall,
            self.hours_seen,
            eta,
        )
        if trainer.logger is not None:
            trainer.logger.log_metrics(
                {"throughput_audio_s_per_s": rate, "hours_seen": self.hours_seen}, step
            )

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        """Mark the batch whose end we save at as completed, as it is: the optimizer has stepped.

        Lightning counts a batch completed only after on_train_batch_end; a checkpoint saved
        there would make a resumed run count that batch again, shifting every later
        validation and pseudo-epoch boundary by one step.
        """
        if not self._saving:
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for part in ("total", "current"):
            progress[part]["completed"] = progress[part]["ready"]

    def _checkpoint(self, trainer: Trainer, step: int) -> str:
        self._pause()
        self._saving = True
        try:
            uri = self.store.save(trainer, step)
            self.last_saved_step = step
            self.last_checkpoint = uri
            if trainer.is_global_zero:
                self.store.prune(self.keep_checkpoints)
                if self.after_checkpoint is not None:
                    self.after_checkpoint()
        finally:
            self._saving = False
            self._resume()
        return uri

    # --- validation: WER over all ranks -----------------------------------------------------

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pause()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resume()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_sums = [0.0, 0.0, 0.0, 0.0]

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if not isinstance(outputs, dict) or "val_wer_num" not in outputs:
            return
        self._val_sums[0] += float(outputs["val_wer_num"])
        self._val_sums[1] += float(outputs["val_wer_denom"])
        self._val_sums[2] += float(outputs.get("val_loss", float("nan")))
        self._val_sums[3] += 1.0

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        errors, words, loss_sum, batches = _all_reduce(trainer, self._val_sums)
        if words <= 0:
            return
        self.val_wer = errors / words
        self.val_loss = loss_sum / batches if batches else None
        self.val_step = trainer.global_step
        if trainer.is_global_zero:
            log.info(
                "validation at step %d: val_wer %.4f val_loss %.4f (%d words)",
                self.val_step,
                self.val_wer,
                self.val_loss or float("nan"),
                int(words),
            )
            if trainer.logger is not None:
                trainer.logger.log_metrics({"val_wer_all_ranks": self.val_wer}, self.val_step)

    # --- timing ----------------------------------------------------------------------------

    def _pause(self) -> None:
        self._paused_at = time.monotonic()

    def _resume(self) -> None:
        if self._paused_at is not None:
            self._window.exclude(time.monotonic() - self._paused_at)
            self._paused_at = None

    @property
    def attempt_throughput(self) -> float:
        """Audio-seconds per second over this attempt's training time (all ranks)."""
        return self.attempt_audio_seconds / self.attempt_train_seconds if self.attempt_train_seconds else 0.0


class _Window:
    """Audio seconds, losses and wall time since the last log line, less excluded time."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.started = time.monotonic()
        self.excluded = 0.0
        self.audio = 0.0
        self.losses: list[float] = []

    def add(self, audio: float, loss: float) -> None:
        self.audio += audio
        self.losses.append(loss)

    def exclude(self, seconds: float) -> None:
        self.excluded += seconds

    def take(self) -> tuple[float, float, float]:
        seconds = max(0.0, time.monotonic() - self.started - self.excluded)
        loss = sum(self.losses) / len(self.losses) if self.losses else float("nan")
        out = (seconds, self.audio, loss)
        self.restart()
        return out


def _all_reduce(trainer: Trainer, values: list[float]) -> list[float]:
    """Sum ``values`` over all ranks (one collective; a no-op on one process)."""
    if (
        trainer.world_size <= 1
        or not torch.distributed.is_available()
        or not torch.distributed.is_initialized()
    ):
        return list(values)
    tensor = torch.tensor(values, dtype=torch.float64, device=trainer.strategy.root_device)
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.tolist()


class DataSeed(Callback):
    """Give each rank its own data order when there are no dataloader workers.

    With workers, Lhotse's worker_init_fn makes the seeds differ per rank and worker;
    without, the integer seed in the config is used as it is, so the rank is mixed in here,
    in ``setup``: after the process group (and so the rank) exists, before NeMo builds the
    deferred data loaders.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        from omegaconf import open_dict

        train_ds = pl_module.cfg.train_ds
        if stage != "fit" or train_ds.get("shard_seed") == "randomized":
            return
        with open_dict(train_ds):
            train_ds.shard_seed = self.seed + 100_003 * trainer.global_rank


class FreezeEncoder(Callback):
    """Keep a frozen encoder in eval mode (batch-norm statistics and dropout stay fixed).

    Lightning puts the whole model in train mode when training starts; this puts the
    encoder back. Its parameters are frozen by ``model.encoder.freeze()`` before training.
    """

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.encoder.eval()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        pl_module.encoder.eval()

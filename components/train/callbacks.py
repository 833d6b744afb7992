"""Lightning callbacks for asrflow training: log lines, step checkpoints, SIGTERM, freezing.

Lightning 2.4 turns SIGTERM into ``SIGTERMException``, a ``SystemExit`` with no code, so a
preempted process would exit 0, and NeMo's preemption callback exits 0 too. KFP would then
take a preempted step for a finished one. :class:`TrainingMonitor` replaces the SIGTERM
handler once training starts: the signal sets a flag, all ranks agree on it at the end of
the step (one all-reduce that also carries the step's loss and audio seconds), save a
checkpoint together and raise :class:`Preempted`, which the CLI turns into exit code 143.

A flag read at the end of a step is not enough when no step ends: data loading that hangs
(a shard on storage that stopped answering) or a long validation. A watchdog thread acts
for the flag then: when SIGTERM has waited ``sigterm_grace`` seconds while the process is
neither in a step nor saving a checkpoint, it interrupts the main thread (a signal sent to
it, whose handler raises :class:`Abort`: a ``BaseException``, which no ``except Exception``
in the data-loading code swallows) and the process exits 143 with the checkpoint it has;
should even that not end it within seconds, it exits with ``os._exit``. The same thread
turns a run with no progress (no training or validation batch, no checkpoint) for
``stall_timeout`` seconds into an error (:class:`Stalled`, exit 1) instead of a spin.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from components.progress import format_seconds
from components.train.checkpoints import CheckpointStore, plain_hyperparameters

log = logging.getLogger("asrflow.train")

EXIT_PREEMPTED = 143  # 128 + SIGTERM, what a shell reports for a process killed by SIGTERM
EXIT_STALLED = 1
SIGTERM_GRACE_S = 3.0
"""After SIGTERM, how long a process outside a step waits for one (a batch that is about to
arrive: its step then ends with a checkpoint) before it stops where it is."""
STEP_GRACE_S = 30.0
"""After SIGTERM, how long a step may take to end before it is taken for hung (a collective
waiting for a rank that is gone)."""
HARD_EXIT_S = 5.0
"""After the main thread was interrupted, how long it has to unwind before ``os._exit``."""
WAKE_SIGNAL = signal.SIGUSR2  # sent by the watchdog to the main thread only


class Preempted(Exception):
    """Training stopped by SIGTERM before max_steps; the process must exit non-zero."""

    exit_code = EXIT_PREEMPTED

    def __init__(self, step: int, max_steps: int, checkpoint: str | None, detail: str = "") -> None:
        """``step`` -1: stopped before training started."""
        saved = f"checkpoint {checkpoint}" if checkpoint else "no new checkpoint"
        where = f"at step {step} of {max_steps}" if step >= 0 else "before training started"
        super().__init__(f"stopped by SIGTERM {where}{detail} ({saved}); rerun to resume")
        self.step = step


class Stalled(RuntimeError):
    """No training progress for longer than the stall timeout."""

    exit_code = EXIT_STALLED


class Abort(BaseException):
    """Raised into the main thread to stop it wherever it is; carries the error to report.

    A ``BaseException`` (like ``KeyboardInterrupt``), so that the ``except Exception`` blocks
    of data-loading code do not swallow it; :func:`components.train.core.train` unwraps it.
    """

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class TrainingMonitor(Callback):
    """Plain log lines, step checkpoints and SIGTERM handling for one run.

    Every ``log_every`` steps global rank 0 logs one line with the step, train loss (mean
    over ranks), learning rate, throughput in audio-seconds per second (all ranks, without
    validation and checkpoint time), audio hours seen and an ETA. After each validation it
    logs the WER over the whole validation set (summed over ranks): the model's own head's
    (NeMo's ``val_wer_num``/``val_wer_denom``: CTC, RNN-T or TDT), and a hybrid's CTC head's
    too (``val_wer_num_ctc``/``val_wer_denom_ctc``).

    Args:
        store: where checkpoints go.
        checkpoint_every: save every this many optimizer steps.
        log_every: one log line every this many steps.
        max_steps: the run's target, for progress and ETA.
        sample_rate: to turn audio lengths in samples into seconds.
        keep_checkpoints: complete checkpoints kept; older ones are deleted.
        after_checkpoint: called on rank 0 after each checkpoint (e.g. copy TensorBoard files).
        stall_timeout: seconds without progress before the run fails (None: never).
        sigterm_grace: seconds a SIGTERM waits for a step to end it before stopping the run
            where it is.
        health: the damaged-shard accounting, carried in checkpoints.
        sources: for a mixture, what each batch holds of each source (:class:`SourceTally`);
            the monitor sums it over ranks and steps, and carries it in checkpoints.
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
        stall_timeout: float | None = None,
        sigterm_grace: float = SIGTERM_GRACE_S,
        health: Any = None,
        sources: SourceTally | None = None,
    ) -> None:
        if checkpoint_every < 1 or log_every < 1:
            raise ValueError("checkpoint_every and log_every must be at least 1")
        self.stall_timeout = stall_timeout or None
        self.sigterm_grace = sigterm_grace
        self.health = health
        self.store = store
        self.checkpoint_every = checkpoint_every
        self.log_every = log_every
        self.max_steps = max_steps
        self.sample_rate = sample_rate
        self.keep_checkpoints = keep_checkpoints
        self.after_checkpoint = after_checkpoint
        # carried over a resume through the checkpoint (state_dict)
        self.audio_seconds_total = 0.0
        self.sources = sources
        self.source_seconds = [0.0] * (sources.num_sources if sources else 0)
        self.source_utterances = [0.0] * (sources.num_sources if sources else 0)
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
        self.val_wer_ctc: float | None = None  # a hybrid's CTC head
        self.val_loss: float | None = None  # None when the model computes none (compute_eval_loss)
        self.val_step: int | None = None
        self._window = _Window()
        self._paused_at: float | None = None
        self._saving = False
        self._val_sums: list[float] = [0.0] * len(_VAL_SUMS)
        # what the main thread is doing, for the watchdog: setup, data (waiting for a batch),
        # step, validation, saving, stopping (unwinding after an error or Preempted), done
        self._phase = "setup"
        self._phase_since = time.monotonic()
        self._progress_at = time.monotonic()
        self._sigterm_at: float | None = None
        self._escalated_at: float | None = None
        self._pending: Abort | None = None
        self._exit_code = EXIT_PREEMPTED
        self._main_thread = threading.main_thread().ident
        self._watch_stop = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._step = 0
        self._trainer: Trainer | None = None
        self._wake_handler: Any = None

    # --- state carried in checkpoints ------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"audio_seconds_total": self.audio_seconds_total}
        if self.health is not None:
            state["bad_shards"] = [b.as_dict() for b in self.health.found_during().values()]
        if self.sources is not None:
            state["source_seconds"] = list(self.source_seconds)
            state["source_utterances"] = list(self.source_utterances)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.audio_seconds_total = float(state_dict.get("audio_seconds_total", 0.0))
        n = len(self.source_seconds)
        if n and len(state_dict.get("source_seconds", ())) == n:
            self.source_seconds = [float(x) for x in state_dict["source_seconds"]]
            self.source_utterances = [float(x) for x in state_dict["source_utterances"]]
        if self.health is not None:
            self.health.restore(state_dict.get("bad_shards", []))

    @property
    def hours_seen(self) -> float:
        return self.audio_seconds_total / 3600

    # --- SIGTERM ---------------------------------------------------------------------------

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        rank_local_metrics(pl_module)
        self.start_step = trainer.global_step
        self._step = trainer.global_step
        self.last_saved_step = trainer.global_step
        self._trainer = trainer
        launcher = trainer.strategy.launcher

        def on_sigterm(signum: int, frame: Any) -> None:
            if not self.stop_requested and launcher is not None and trainer.is_global_zero:
                launcher.kill(signum)  # DDP children started by Lightning get it from rank 0
            self.stop_requested = True
            if self._sigterm_at is None:
                self._sigterm_at = time.monotonic()

        def on_wake(signum: int, frame: Any) -> None:
            pending, self._pending = self._pending, None
            if pending is not None and self._phase not in ("stopping", "done"):
                self._set_phase("stopping")
                raise pending

        signal.signal(signal.SIGTERM, on_sigterm)
        signal.signal(WAKE_SIGNAL, on_wake)
        self._wake_handler = on_wake
        if trainer.received_sigterm:
            self.stop_requested = True
            self._sigterm_at = time.monotonic()
        self._touch()
        self._set_phase("data")
        if self._watchdog is None:
            self._watchdog = threading.Thread(target=self._watch, name="asrflow-watchdog", daemon=True)
            self._watchdog.start()
        self._window.restart()
        if trainer.is_global_zero:
            log.info(
                "training from step %d to %d on %d process(es)",
                self.start_step,
                self.max_steps,
                trainer.world_size,
            )

    # --- the watchdog ------------------------------------------------------------------------

    def _set_phase(self, phase: str) -> None:
        self._phase = phase
        self._phase_since = time.monotonic()

    def _touch(self) -> None:
        self._progress_at = time.monotonic()

    def _watch(self) -> None:
        """The watchdog thread: SIGTERM outside a step, no progress, an interrupt that did not end it."""
        while not self._watch_stop.wait(0.2):
            now = time.monotonic()
            phase = self._phase
            if phase == "done":
                continue
            if self._escalated_at is not None:
                if now - self._escalated_at > HARD_EXIT_S:
                    self._hard_exit(
                        f"the main thread did not stop within {HARD_EXIT_S:.0f}s of being interrupted"
                    )
                continue
            if phase == "stopping":
                if now - self._phase_since > 2 * HARD_EXIT_S + self.sigterm_grace and self._sigterm_at:
                    self._hard_exit(f"still stopping {now - self._phase_since:.0f}s after SIGTERM")
                continue
            if self._sigterm_at is not None:
                waited = now - self._sigterm_at
                if phase in ("data", "validation", "setup") and waited > self.sigterm_grace:
                    where = "waiting for data" if phase == "data" else f"in {phase}"
                    self._escalate(
                        Preempted(
                            self._step,
                            self.max_steps,
                            self.last_checkpoint,
                            f" (no step ended within {self.sigterm_grace:.0f}s: {where})",
                        ),
                        EXIT_PREEMPTED,
                    )
                elif phase == "step" and waited > STEP_GRACE_S:
                    self._escalate(
                        Preempted(
                            self._step,
                            self.max_steps,
                            self.last_checkpoint,
                            f" (a step did not end within {STEP_GRACE_S:.0f}s)",
                        ),
                        EXIT_PREEMPTED,
                    )
                continue
            if self.stall_timeout and phase != "saving" and now - self._progress_at > self.stall_timeout:
                where = {"data": "waiting for training data", "step": "in a training step"}.get(phase, phase)
                self._escalate(
                    Stalled(
                        f"no training progress for {format_seconds(now - self._progress_at)} "
                        f"(--stall-timeout {self.stall_timeout / 60:g}) after step {self._step}, "
                        f"{where}: is the data storage answering? (no batch in that time; a damaged "
                        "shard is reported on its own)"
                    ),
                    EXIT_STALLED,
                )

    def _escalate(self, error: Exception, exit_code: int) -> None:
        """Interrupt the main thread with ``Abort(error)`` (run from the watchdog thread)."""
        self._escalated_at = time.monotonic()
        self._exit_code = exit_code
        self._pending = Abort(error)
        _stderr_line(f"asrflow train: {error}: stopping")
        if signal.getsignal(WAKE_SIGNAL) is self._wake_handler:  # not after Lightning's teardown
            signal.pthread_kill(self._main_thread, WAKE_SIGNAL)

    def _hard_exit(self, why: str) -> None:
        _stderr_line(f"asrflow train: {why}; exiting with status {self._exit_code}")
        trainer = self._trainer
        launcher = trainer.strategy.launcher if trainer is not None else None
        if launcher is not None and trainer is not None and trainer.is_global_zero:
            launcher.kill(signal.SIGKILL)
        os._exit(self._exit_code)

    def _stop_watching(self) -> None:
        self._set_phase("done")
        self._watch_stop.set()

    def close(self) -> None:
        """Stop the watchdog (training is over, whatever the outcome)."""
        self._stop_watching()

    def on_exception(self, trainer: Trainer, pl_module: LightningModule, exception: BaseException) -> None:
        if self._phase != "done":
            self._set_phase("stopping")

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._stop_watching()

    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage == "fit" and self._phase != "stopping":
            self._stop_watching()

    # --- steps -----------------------------------------------------------------------------

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._set_phase("step")

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._touch()
        self._step = trainer.global_step
        try:
            self._train_batch_end(trainer, outputs, batch)
        finally:
            if self._phase == "step":
                self._set_phase("data")

    def _train_batch_end(self, trainer: Trainer, outputs: Any, batch: Any) -> None:
        audio_seconds = float(batch[1].sum().item()) / self.sample_rate
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        loss_value = float(loss.detach().float().item()) if loss is not None else float("nan")
        by_source = self.sources.take() if self.sources is not None else []
        sums = _all_reduce(trainer, [audio_seconds, loss_value, float(self.stop_requested), *by_source])
        audio_all, loss_mean, stop = sums[0], sums[1] / trainer.world_size, sums[2] > 0
        n = len(self.source_seconds)
        for index in range(n):
            self.source_seconds[index] += sums[3 + index] / self.sample_rate
            self.source_utterances[index] += sums[3 + n + index]
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
            self._set_phase("stopping")
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
        plain_hyperparameters(checkpoint)  # loadable with weights_only=True
        if not self._saving:
            return
        progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
        for part in ("total", "current"):
            progress[part]["completed"] = progress[part]["ready"]

    def _checkpoint(self, trainer: Trainer, step: int) -> str:
        self._pause()
        self._saving = True
        before = self._phase
        self._set_phase("saving")
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
            self._set_phase(before)
            self._touch()
            self._resume()
        return uri

    # --- validation: WER over all ranks -----------------------------------------------------

    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._pause()
        if self._phase not in ("done", "stopping"):
            self._set_phase("validation")
        self._touch()

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._resume()
        if self._phase == "validation":
            self._set_phase("data")
        self._touch()

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_sums = [0.0] * len(_VAL_SUMS)

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._touch()
        if isinstance(outputs, dict) and "val_wer_num" in outputs:
            for index, value in enumerate(validation_figures(outputs)):
                self._val_sums[index] += value

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        sums = dict(zip(_VAL_SUMS, _all_reduce(trainer, self._val_sums), strict=True))
        if sums["words"] <= 0:
            return
        self.val_wer = sums["errors"] / sums["words"]
        self.val_wer_ctc = sums["ctc_errors"] / sums["ctc_words"] if sums["ctc_words"] > 0 else None
        self.val_loss = sums["loss"] / sums["loss_batches"] if sums["loss_batches"] else None
        self.val_step = trainer.global_step
        if trainer.is_global_zero:
            log.info(
                "validation at step %d: val_wer %.4f%s val_loss %s (%d words)",
                self.val_step,
                self.val_wer,
                f" val_wer_ctc {self.val_wer_ctc:.4f}" if self.val_wer_ctc is not None else "",
                f"{self.val_loss:.4f}" if self.val_loss is not None else "n/a",
                int(sums["words"]),
            )
            if trainer.logger is not None:
                metrics = {"val_wer_all_ranks": self.val_wer}
                if self.val_wer_ctc is not None:
                    metrics["val_wer_ctc_all_ranks"] = self.val_wer_ctc
                trainer.logger.log_metrics(metrics, self.val_step)

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


_VAL_SUMS = ("errors", "words", "loss", "loss_batches", "ctc_errors", "ctc_words")
"""What validation sums over batches and ranks (:func:`validation_figures`, in this order)."""


def validation_figures(outputs: dict[str, Any]) -> list[float]:
    """One validation batch's figures to sum, in :data:`_VAL_SUMS` order.

    Every NeMo ASR model's validation step returns its own head's word errors and words
    (``val_wer_num``, ``val_wer_denom``); a hybrid adds its CTC head's (``..._ctc``). The loss
    is there only when the model computes it (``val_loss``; transducers: compute_eval_loss).
    """
    has_loss = outputs.get("val_loss") is not None
    return [
        float(outputs["val_wer_num"]),
        float(outputs["val_wer_denom"]),
        float(outputs["val_loss"]) if has_loss else 0.0,
        1.0 if has_loss else 0.0,
        float(outputs.get("val_wer_num_ctc", 0.0)),
        float(outputs.get("val_wer_denom_ctc", 0.0)),
    ]


def rank_local_metrics(module: torch.nn.Module) -> None:
    """Make the model's torchmetrics metrics (NeMo's WER, a hybrid's CTC WER) rank-local.

    NeMo builds them with ``dist_sync_on_step=True``: each validation batch's ``compute()``
    gathers over all ranks. Lhotse batches each rank's share of the validation set by
    duration, so ranks can have different numbers of batches, and a rank with more then waits
    for ranks that have finished: DDP hangs (RNN-T on 6 utterances, 2 ranks: rank 0 in
    RNNTJoint's WER gather, rank 1 in this monitor's all-reduce). Rank-local figures are
    what :class:`TrainingMonitor` wants anyway: it sums errors and words over ranks itself,
    once per validation.
    """
    from torchmetrics import Metric

    for metric in module.modules():
        if isinstance(metric, Metric):
            metric.dist_sync_on_step = False
            metric.sync_on_compute = False
            metric._to_sync = False  # what compute() reads; set from the two above at init


def _stderr_line(text: str) -> None:
    """One line on stderr without the logging module (whose locks another thread may hold)."""
    try:
        os.write(sys.stderr.fileno(), (text.replace("\n", " ") + "\n").encode("utf-8", "replace"))
    except (OSError, ValueError):
        pass


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

    Lightning puts the whole model in train mode when training starts; this puts the frozen
    part of the encoder back (all of it, or all but its last ``train_last_layers`` layers,
    which train: :func:`components.train.finetune.keep_frozen_in_eval`). Its parameters are
    frozen by :func:`components.train.finetune.freeze_encoder` before training.
    """

    def __init__(self, train_last_layers: int = 0) -> None:
        self.train_last_layers = train_last_layers

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fix(pl_module)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fix(pl_module)

    def _fix(self, pl_module: LightningModule) -> None:
        from components.train.finetune import keep_frozen_in_eval

        keep_frozen_in_eval(pl_module, self.train_last_layers)


class CountedSources(torch.utils.data.Dataset):
    """NeMo's Lhotse dataset, each batch followed by what it holds of each mixture source.

    It wraps the dataset inside NeMo's ``IterableDatasetWrapper`` and runs where the batches
    are made (a dataloader worker, or the training process without workers). The batch it
    returns is a list, ``[audio, audio_lens, tokens, token_lens, counts]``;
    :class:`SourceTally` takes ``counts`` off again before the model's step sees the batch.
    ``counts[0, k]`` is source ``k``'s audio in samples, ``counts[1, k]`` its utterances; the
    source is the ``asrflow_source`` tag NeMo's ``input_cfg`` puts on every cut.
    """

    def __init__(self, dataset: Any, num_sources: int) -> None:
        self.dataset = dataset
        self.num_sources = num_sources

    def __getitem__(self, cuts: Any) -> list[Any]:
        batch = self.dataset[cuts]
        return [*batch, source_counts(list(cuts), batch[1], self.num_sources)]


def source_counts(cuts: list[Any], audio_lens: torch.Tensor, num_sources: int) -> torch.Tensor:
    """Samples and utterances of each source in a batch, shape ``(2, num_sources)``.

    NeMo's dataset drops an utterance whose audio cannot be read; then the batch's samples
    are shared among the sources by the durations of the cuts it was given.
    """
    from components.train.data import SOURCE_TAG

    sources = []
    for cut in cuts:
        source = (cut.custom or {}).get(SOURCE_TAG)
        if source is None or not 0 <= int(source) < num_sources:
            raise RuntimeError(
                f"cut {cut.id} carries no {SOURCE_TAG} tag of 0..{num_sources - 1}: {source!r}"
            )
        sources.append(int(source))
    counts = torch.zeros(2, num_sources, dtype=torch.float64)
    lens = [float(n) for n in audio_lens.tolist()]
    if len(lens) == len(cuts):
        for source, samples in zip(sources, lens, strict=True):
            counts[0, source] += samples
            counts[1, source] += 1
        return counts
    durations = [float(cut.duration) for cut in cuts]
    total = sum(durations) or 1.0
    for source, duration in zip(sources, durations, strict=True):
        counts[0, source] += sum(lens) * duration / total
        counts[1, source] += len(lens) * duration / total
    return counts


class SourceTally(Callback):
    """What each training batch of a mixture holds of each source (see :class:`CountedSources`).

    ``on_fit_start`` (after NeMo built its training dataloader, before Lightning iterates it)
    wraps the dataset; ``on_train_batch_start`` takes the counts off the batch, so the model
    sees NeMo's own four tensors; :class:`TrainingMonitor` sums them over ranks (:meth:`take`).
    """

    def __init__(self, num_sources: int) -> None:
        self.num_sources = num_sources
        self._batch: list[float] | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = getattr(pl_module, "_train_dl", None)
        holder = getattr(loader, "dataset", None)
        if holder is None or not hasattr(holder, "sampler") or not hasattr(holder, "dataset"):
            raise RuntimeError(
                f"a mixture needs NeMo's Lhotse IterableDatasetWrapper as the training dataset, got "
                f"{type(holder).__name__}: is model.train_ds.use_lhotse true?"
            )
        if not isinstance(holder.dataset, CountedSources):
            holder.dataset = CountedSources(holder.dataset, self.num_sources)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not isinstance(batch, list) or len(batch) != 5:
            raise RuntimeError(
                f"a mixture's training batch should end with its source counts, got {type(batch)}"
            )
        counts = batch.pop()
        self._batch = [float(x) for x in counts.flatten().tolist()]

    def take(self) -> list[float]:
        """This rank's last batch: samples per source, then utterances per source."""
        counts, self._batch = self._batch, None
        return counts if counts is not None else [0.0] * (2 * self.num_sources)

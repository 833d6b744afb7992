"""Step checkpoints under ``RUN_DIR/checkpoints``: atomic, marked complete, resumable.

Layout: ``checkpoints/step-<8 digits>/model.ckpt`` (a Lightning checkpoint: weights,
optimizer, scheduler, loop and callback state) and ``_SUCCESS`` written after it. A
directory without ``_SUCCESS`` is a write that did not finish and is never resumed from.
Locally the checkpoint is written under a temporary name and renamed; on gs:// it is
written to local scratch and uploaded (checksummed) before the marker.

Trust. A checkpoint is a pickle, and whoever can write the run directory could put one there
that runs code when unpickled. So checkpoints hold plain data only (the model's OmegaConf
hyper-parameters are stored as plain dicts, see :func:`plain_hyperparameters`) and are only
ever loaded with ``torch.load(weights_only=True)``: here, and in Lightning's resume through
:class:`SafeCheckpointIO` (Lightning 2.4's own ``TorchCheckpointIO`` loads with
``weights_only=False``, lightning/fabric/utilities/cloud_io.py ``_load``). The marker records
the file's SHA-256, checked before a resume: a checkpoint changed after it was written is
refused with a message saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

from components import storage

log = logging.getLogger("asrflow.train")

CKPT_NAME = "model.ckpt"
_STEP_DIR = re.compile(r"step-(\d{8})$")


class CheckpointError(RuntimeError):
    """Checkpoints exist but none can be resumed from."""


class UntrustedCheckpoint(ValueError):
    """A checkpoint changed after it was written, or one that a safe load refuses to unpickle."""


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes from: its global step and a local path to it."""

    step: int
    local_path: str
    uri: str
    sha256: str | None = None


class CheckpointStore:
    """The checkpoints of one run.

    Args:
        root: ``RUN_DIR/checkpoints`` (local or gs://).
        scratch: a local directory for gs:// downloads and uploads.
    """

    def __init__(self, root: str, scratch: str | os.PathLike[str]) -> None:
        self.root = root
        self.scratch = Path(scratch)

    def step_dir(self, step: int) -> str:
        return storage.join(self.root, f"step-{step:08d}")

    def _steps(self) -> dict[int, set[str]]:
        """Step -> names of the files in its directory."""
        try:
            files = storage.list_files(self.root)
        except FileNotFoundError:
            return {}
        found: dict[int, set[str]] = {}
        for info in files:
            match = _STEP_DIR.search(storage.parent(info.uri))
            if match:
                found.setdefault(int(match.group(1)), set()).add(storage.basename(info.uri))
        return found

    def complete_steps(self) -> list[int]:
        """Steps with a finished checkpoint (file and marker), oldest first."""
        return sorted(s for s, names in self._steps().items() if {CKPT_NAME, storage.SUCCESS_MARKER} <= names)

    def incomplete_steps(self) -> list[int]:
        return sorted(s for s, names in self._steps().items() if storage.SUCCESS_MARKER not in names)

    def _local_copy(self, step: int) -> str:
        uri = storage.join(self.step_dir(step), CKPT_NAME)
        if not storage.is_gcs(uri):
            return uri
        local = self.scratch / "resume" / f"step-{step:08d}.ckpt"
        if not local.exists():
            storage.download_file(uri, local)
        return str(local)

    def newest_readable(self) -> Resume | None:
        """The newest complete checkpoint that loads; an unreadable one is skipped with a warning.

        Raises:
            CheckpointError: complete checkpoints exist but none loads (starting from step 0
                would silently throw away the run; the message says how to start over).
        """
        for step in self.incomplete_steps():
            log.warning(
                "checkpoint %s has no %s (a write that did not finish): ignored",
                self.step_dir(step),
                storage.SUCCESS_MARKER,
            )
        steps = self.complete_steps()
        for step in reversed(steps):
            uri = storage.join(self.step_dir(step), CKPT_NAME)
            try:
                recorded = self.recorded_sha256(step)
                local = self._local_copy(step)
                digest = verify_sha256(local, recorded, uri)
                check_checkpoint(local, step)
            except UntrustedCheckpoint as err:
                log.warning("checkpoint %s is refused: %s; trying the previous one", uri, err)
                continue
            except Exception as err:  # noqa: BLE001 - any failure to read means: try the previous one
                log.warning(
                    "checkpoint %s is unreadable (%s: %s); trying the previous one",
                    uri,
                    type(err).__name__,
                    str(err)[:200],
                )
                continue
            return Resume(step, local, uri, digest)
        if steps:
            raise CheckpointError(
                f"{self.root} holds {len(steps)} checkpoint(s) but none can be read; refusing to start "
                f"from step 0. Delete {self.root} to start the run over."
            )
        return None

    def recorded_sha256(self, step: int) -> str | None:
        """The SHA-256 the marker of ``step`` records (None for a marker without one)."""
        text = storage.read_text(storage.join(self.step_dir(step), storage.SUCCESS_MARKER))
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "sha256" and re.fullmatch(r"[0-9a-f]{64}", value.strip()):
                return value.strip()
        return None

    def save(self, trainer: Any, step: int) -> str:
        """Write the trainer's state as the checkpoint for ``step``; call on every rank.

        Lightning gathers the state on every rank and writes it on global rank 0 only; rank 0
        then moves it into place and writes the marker.
        """
        started = time.monotonic()
        directory = self.step_dir(step)
        target = storage.join(directory, CKPT_NAME)
        if storage.is_gcs(target):
            local = self.scratch / "upload" / f"step-{step:08d}.ckpt"
        else:
            local = Path(directory, f"{storage.TEMP_PREFIX}{CKPT_NAME}")
        if trainer.is_global_zero:
            # An unmarked file here is a write that did not finish (or a corrupt checkpoint
            # being replaced): remove it, so that the upload below can be create-only.
            storage.delete(storage.join(directory, storage.SUCCESS_MARKER))
            if storage.is_gcs(target):
                storage.delete(target)
            local.parent.mkdir(parents=True, exist_ok=True)
        trainer.save_checkpoint(str(local))
        if not trainer.is_global_zero:
            return target
        size = local.stat().st_size
        digest = sha256_file(local)
        if storage.is_gcs(target):
            storage.upload_file(local, target)  # create-only, checksummed
            local.unlink()
        else:
            with open(local, "rb") as stream:
                os.fsync(stream.fileno())
            os.replace(local, target)
        storage.mark_complete(directory, f"step {step}\nsha256 {digest}\n")
        log.info(
            "checkpoint step %d saved: %s (%.1f MB in %.1fs)",
            step,
            target,
            size / 1e6,
            time.monotonic() - started,
        )
        return target

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` complete checkpoints (and older unfinished ones)."""
        complete = self.complete_steps()
        if keep <= 0 or len(complete) <= keep:
            return
        cutoff = complete[-keep]
        for step, names in sorted(self._steps().items()):
            if step >= cutoff:
                continue
            directory = self.step_dir(step)
            if storage.SUCCESS_MARKER in names:  # the marker first: never a marked, missing file
                storage.delete(storage.join(directory, storage.SUCCESS_MARKER))
            for name in names - {storage.SUCCESS_MARKER}:
                storage.delete(storage.join(directory, name))
            if not storage.is_gcs(directory):
                try:
                    os.rmdir(directory)
                except OSError:
                    pass


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()


def verify_sha256(path: str, recorded: str | None, uri: str) -> str:
    """The file's SHA-256, checked against the one its marker recorded.

    Raises:
        UntrustedCheckpoint: the bytes changed after the checkpoint was written.
    """
    digest = sha256_file(path)
    if recorded is None:
        log.info("checkpoint %s: its marker records no sha256 (written by an older asrflow)", uri)
    elif digest != recorded:
        raise UntrustedCheckpoint(
            f"its bytes changed after it was written (sha256 {digest[:16]}…, the marker records "
            f"{recorded[:16]}…)"
        )
    return digest


def load_checkpoint_file(path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers, never code.

    Raises:
        UntrustedCheckpoint: the pickle refers to anything else (a class or function that a
            full unpickler would import and may call); nothing of it is run.
        Exception: whatever torch raises for a truncated or corrupt file.
    """
    import pickle

    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        found = re.search(r"(?:unsupported global|unsupported operand)[^\n]*", str(err), re.IGNORECASE)
        detail = found.group(0).strip().rstrip(".") if found else str(err).splitlines()[0][:200]
        raise UntrustedCheckpoint(
            f"{path}: not loaded: it holds more than tensors and plain data ({detail}), which a safe "
            "load (weights_only) refuses; a checkpoint asrflow writes never does"
        ) from None


def plain_hyperparameters(checkpoint: dict[str, Any]) -> None:
    """Store the model's (OmegaConf) hyper-parameters as plain containers, in place.

    Resuming never reads them (the model is built from the config first), and plain data is
    what a ``weights_only`` load accepts without allow-listing OmegaConf and NeMo classes.
    """
    from omegaconf import Container, OmegaConf

    hparams = checkpoint.get("hyper_parameters")
    if isinstance(hparams, Container):
        checkpoint["hyper_parameters"] = OmegaConf.to_container(hparams, resolve=False, enum_to_str=True)
    checkpoint.pop("hparams_type", None)


def safe_checkpoint_io() -> Any:
    """A Lightning CheckpointIO that saves as Lightning does and loads with weights_only=True."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class SafeCheckpointIO(TorchCheckpointIO):
        def load_checkpoint(self, path: Any, map_location: Any = None, **kwargs: Any) -> dict[str, Any]:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"checkpoint not found: {path}")
            return load_checkpoint_file(path, map_location=map_location or "cpu")

    return SafeCheckpointIO()


def check_checkpoint(path: str, step: int) -> None:
    """Load a Lightning checkpoint safely and check that it holds what resuming needs.

    Raises:
        UntrustedCheckpoint: a pickle that is not plain data (never run).
        ValueError: a missing part or a global step that is not ``step``.
        Exception: whatever torch raises for a truncated or corrupt file.
    """
    state = load_checkpoint_file(path, mmap=True)
    missing = [k for k in ("state_dict", "optimizer_states", "lr_schedulers", "loops") if k not in state]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the checkpoint")
    if state.get("global_step") != step:
        raise ValueError(f"global_step is {state.get('global_step')}, the directory says {step}")

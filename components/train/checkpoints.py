"""Step checkpoints under ``RUN_DIR/checkpoints``: atomic, marked complete, resumable.

Layout: ``checkpoints/step-<8 digits>/model.ckpt`` (a Lightning checkpoint: weights,
optimizer, scheduler, loop and callback state) and ``_SUCCESS`` written after it. A
directory without ``_SUCCESS`` is a write that did not finish and is never resumed from.
Locally the checkpoint is written under a temporary name and renamed; on gs:// it is
written to local scratch and uploaded (checksummed) before the marker.
"""

from __future__ import annotations

import dataclasses
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


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint a run resumes from: its global step and a local path to it."""

    step: int
    local_path: str
    uri: str


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
                local = self._local_copy(step)
                check_checkpoint(local, step)
            except Exception as err:  # noqa: BLE001 - any failure to read means: try the previous one
                log.warning(
                    "checkpoint %s is unreadable (%s: %s); trying the previous one",
                    uri,
                    type(err).__name__,
                    str(err)[:200],
                )
                continue
            return Resume(step, local, uri)
        if steps:
            raise CheckpointError(
                f"{self.root} holds {len(steps)} checkpoint(s) but none can be read; refusing to start "
                f"from step 0. Delete {self.root} to start the run over."
            )
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
        if storage.is_gcs(target):
            storage.upload_file(local, target)  # create-only, checksummed
            local.unlink()
        else:
            with open(local, "rb") as stream:
                os.fsync(stream.fileno())
            os.replace(local, target)
        storage.mark_complete(directory, f"step {step}\n")
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


def check_checkpoint(path: str, step: int) -> None:
    """Load a Lightning checkpoint and check that it holds what resuming needs.

    Raises:
        ValueError: a missing part or a global step that is not ``step``.
        Exception: whatever torch raises for a truncated or corrupt file.
    """
    import torch

    state = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    missing = [k for k in ("state_dict", "optimizer_states", "lr_schedulers", "loops") if k not in state]
    if missing:
        raise ValueError(f"no {', '.join(missing)} in the checkpoint")
    if state.get("global_step") != step:
        raise ValueError(f"global_step is {state.get('global_step')}, the directory says {step}")

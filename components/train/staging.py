"""A run's local scratch: local copies of what it reads from gs://, uploads of what it writes there."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

from components import storage
from components.train.errors import TrainError

WORK_DIR = "work"
"""A local run's scratch, under its run directory."""


def local_work_dir(run_dir: str) -> Path:
    """Local scratch for a run: ``RUN_DIR/work`` for a local run, a temp dir for gs://."""
    if not storage.is_gcs(run_dir):
        return Path(run_dir, WORK_DIR)
    root = Path(os.environ.get("ASRFLOW_SCRATCH", tempfile.gettempdir()), "asrflow")
    return root / hashlib.sha1(run_dir.encode()).hexdigest()[:12]


def fetch(uri: str, local_dir: Path) -> str:
    """A local path for a file that may be on gs://."""
    if not storage.is_gcs(uri):
        if not Path(uri).exists():
            raise TrainError(f"not found: {uri}")
        return uri
    local = local_dir / storage.basename(uri)
    if not local.exists():
        storage.download_file(uri, local)
    return str(local)


def fetch_dir(uri: str, local_dir: Path) -> str:
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


def upload_tree(local_dir: Path, uri: str) -> None:
    """Copy a local directory's files to ``uri`` (overwriting: TensorBoard files grow)."""
    if not local_dir.is_dir():
        return
    for path in sorted(local_dir.rglob("*")):
        if path.is_file():
            storage.upload_file(path, storage.join(uri, str(path.relative_to(local_dir))), overwrite=True)

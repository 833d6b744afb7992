"""The files of a NeMo ``.nemo`` archive, read without restoring the model.

A ``.nemo`` is a tar of ``model_config.yaml`` (:data:`components.layout.NEMO_CONFIG_NAME`),
the weights and the tokenizer's files, stored under a ``./`` prefix or none: files are found
by their base name, as the config's ``nemo:`` paths name them.
"""

from __future__ import annotations

import tarfile
from pathlib import Path

from components.layout import NEMO_CONFIG_NAME, NEMO_WEIGHTS_NAME


def files_by_name(tar: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's files by base name (reads the tar headers only)."""
    return {Path(member.name).name: member for member in tar.getmembers() if member.isfile()}


def read_file(tar: tarfile.TarFile, name: str) -> bytes | None:
    """The bytes of the file whose base name is ``name``; None when the archive has none."""
    member = files_by_name(tar).get(Path(name).name)
    data = tar.extractfile(member) if member is not None else None
    return data.read() if data is not None else None


def read_config(tar: tarfile.TarFile) -> bytes | None:
    """The bytes of the model's ``model_config.yaml``; None when it is not a .nemo archive."""
    return read_file(tar, NEMO_CONFIG_NAME)


def read_weights(tar: tarfile.TarFile) -> bytes | None:
    """The bytes of the model's state dict (a torch file); None when the archive has none."""
    return read_file(tar, NEMO_WEIGHTS_NAME)

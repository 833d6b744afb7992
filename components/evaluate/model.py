"""The model under evaluation: a .nemo archive, loaded once, transcribing utterances.

NeMo does the work (``ASRModel.restore_from`` and ``model.transcribe``); this module checks
the file first, so that a wrong file is named at once, and feeds NeMo small manifests in an
order that wastes little padding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components import nemo_archive, storage
from components.evaluate.decoding import (
    Decoding,
    ModelInfo,
    apply_decoding,
    check_served_head,
    read_model_info,
)
from components.evaluate.errors import EvaluateError
from components.evaluate.sets import Utterance
from components.layout import NEMO_CONFIG_NAME

log = logging.getLogger("asrflow.evaluate")

WHAT_A_NEMO_IS = (
    "a NeMo model is a tar archive holding model_config.yaml and the weights, "
    "like the RUN_DIR/model.nemo that `asrflow train` writes"
)


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_nemo_archive(local_path: str, shown_as: str | None = None) -> None:
    """Raise :class:`EvaluateError` unless ``local_path`` is a .nemo archive.

    Reads only the tar headers, so a wrong file is named at once, before any audio is
    transcribed, rather than deep inside NeMo's restore.

    Args:
        local_path: the file on this machine.
        shown_as: the name the user gave (a gs:// URI for a local copy).
    """
    import tarfile

    name = shown_as or local_path
    try:
        with tarfile.open(local_path, "r:*") as tar:
            if NEMO_CONFIG_NAME in nemo_archive.files_by_name(tar):
                return
    except (tarfile.TarError, EOFError) as err:
        raise EvaluateError(f"{name} is not a .nemo archive (not a tar file); {WHAT_A_NEMO_IS}") from err
    except OSError as err:
        raise EvaluateError(f"{name}: cannot read the model: {err}") from err
    raise EvaluateError(f"{name} is not a .nemo archive (no {NEMO_CONFIG_NAME} in it); {WHAT_A_NEMO_IS}")


def load_model(local_path: str, device: str, shown_as: str | None = None) -> Any:
    """Restore a .nemo ASR model (any NeMo ASR class) onto ``device``, in eval mode.

    Raises:
        EvaluateError: the file is not a .nemo archive, or NeMo cannot restore it (the
            message names the file; the cause keeps NeMo's traceback).
    """
    import torch
    from nemo.collections.asr.models import ASRModel
    from nemo.utils import logging as nemo_logging

    check_nemo_archive(local_path, shown_as)
    verbosity = nemo_logging.get_verbosity()
    nemo_logging.set_verbosity(nemo_logging.WARNING)  # NeMo prints the whole config at INFO
    try:
        model = ASRModel.restore_from(local_path, map_location=torch.device(device))
    except Exception as err:
        reason = (str(err).strip().splitlines() or [""])[0]
        raise EvaluateError(
            f"{shown_as or local_path}: NeMo cannot restore this model ({type(err).__name__}: {reason})"
        ) from err
    finally:
        nemo_logging.set_verbosity(verbosity)
    model.eval()
    return model


def _hypothesis_text(item: Any) -> str:
    if isinstance(item, str):
        return item
    text = getattr(item, "text", None)
    if isinstance(text, str):
        return text
    raise TypeError(f"model.transcribe returned {type(item).__name__}, not text or a Hypothesis")


def _write_chunk_manifest(path: str, utterances: Sequence[Utterance]) -> None:
    """The manifest NeMo reads for one chunk: audio, duration, offset; no reference text."""
    with open(path, "w", encoding="utf-8") as out:
        for utt in utterances:
            entry: dict[str, Any] = {"audio_filepath": utt.local_path, "duration": utt.duration}
            if utt.offset:
                entry["offset"] = utt.offset
            entry["text"] = ""
            out.write(json.dumps(entry) + "\n")


def transcribe(
    model: Any,
    utterances: Sequence[Utterance],
    batch_size: int,
    num_workers: int,
    work_dir: str,
    on_chunk: Callable[[Sequence[Utterance]], None] | None = None,
) -> list[str]:
    """Transcribe utterances with NeMo's ``model.transcribe``; results in input order.

    Utterances go longest first (less padding per batch) in chunks of 32 batches, each a
    small manifest that carries durations and offsets, read by NeMo's own (non-Lhotse)
    dataset, which keeps manifest order.
    """
    from nemo.collections.asr.parts.mixins.transcription import TranscribeConfig

    order = sorted(range(len(utterances)), key=lambda i: (-utterances[i].duration, i))
    results: list[str | None] = [None] * len(utterances)
    chunk_size = batch_size * 32
    manifest_path = str(Path(work_dir, "transcribe_manifest.json"))
    for start in range(0, len(order), chunk_size):
        chunk = order[start : start + chunk_size]
        _write_chunk_manifest(manifest_path, [utterances[i] for i in chunk])
        config = TranscribeConfig(
            batch_size=batch_size, num_workers=num_workers, verbose=False, use_lhotse=False
        )
        with warnings.catch_warnings():
            # NeMo's transcription loader always asks for pinned memory, which warns on CPU.
            warnings.filterwarnings("ignore", message=".*pin_memory.*")
            outputs = model.transcribe(manifest_path, override_config=config)
        if isinstance(outputs, tuple):  # hybrid models: (best, all) hypotheses
            outputs = outputs[0]
        if len(outputs) != len(chunk):
            raise RuntimeError(f"model.transcribe returned {len(outputs)} results for {len(chunk)} inputs")
        for i, item in zip(chunk, outputs, strict=True):
            results[i] = _hypothesis_text(item)
        if on_chunk is not None:
            on_chunk([utterances[i] for i in chunk])
    return [text or "" for text in results]


class ModelRunner:
    """Loads a model once, when the first set needs transcribing (finished sets need none).

    What the model has (heads, tokenizer) is read from the archive without loading it.
    """

    def __init__(self, model_uri: str, staging_dir: str, device: str, batch_size: int, num_workers: int):
        self.model_uri = model_uri
        self.staging_dir = staging_dir
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._local: str | None = None
        self._md5: str | None = None
        self._info: ModelInfo | None = None
        self._model: Any = None
        self._decoding: Decoding | None = None

    @property
    def local_path(self) -> str:
        if self._local is None:
            if storage.is_gcs(self.model_uri):
                digest = hashlib.sha1(self.model_uri.encode()).hexdigest()[:16]
                local = str(Path(self.staging_dir, "models", digest, storage.basename(self.model_uri)))
                if storage.stat(self.model_uri) is None:
                    raise EvaluateError(f"no such model: {self.model_uri}")
                log.info("evaluate: copying %s to %s", self.model_uri, local)
                storage.download_file(self.model_uri, local)
            else:
                if not Path(self.model_uri).is_file():
                    raise EvaluateError(f"no such model: {self.model_uri}")
                local = self.model_uri
            check_nemo_archive(local, self.model_uri)
            self._local = local
        return self._local

    @property
    def md5(self) -> str:
        """The .nemo file's MD5: which model made a set's hypotheses (for resume and ties).

        On GCS the object's own MD5, so that a rerun whose sets are all done downloads nothing.
        """
        if self._md5 is None:
            info = storage.stat(self.model_uri) if storage.is_gcs(self.model_uri) else None
            self._md5 = info.md5 if info is not None and info.md5 else storage.file_md5(self.local_path)
        return self._md5

    @property
    def info(self) -> ModelInfo:
        """The model's heads, served head and vocabulary, from the archive."""
        if self._info is None:
            self._info = read_model_info(self.local_path, self.model_uri)
        return self._info

    def served_decoding(self) -> Decoding:
        """How the model is served: its served head, greedy."""
        return Decoding(head=self.info.served)

    def model(self, decoding: Decoding | None = None) -> Any:
        """The loaded model, set to decode with ``decoding`` (default: the served decoding)."""
        if self._model is None:
            log.info("evaluate: loading %s on %s", self.model_uri, self.device)
            self._model = load_model(self.local_path, self.device, shown_as=self.model_uri)
            check_served_head(self._model, self.info, self.model_uri)
        decoding = decoding or self.served_decoding()
        if decoding != self._decoding:
            apply_decoding(self._model, decoding)
            self._decoding = decoding
        return self._model

    def close(self) -> None:
        self._model = None
        self._decoding = None

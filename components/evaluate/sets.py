"""Eval sets: their names, their manifests, and the utterances a set holds.

Each eval set is a NeMo manifest (audio paths absolute, ``gs://``, or relative to the
manifest's directory) or a downloaded dataset (parquet directory or download card), which
:func:`components.export.export_manifest` turns into a manifest. Every utterance of a set is
scored: a bad manifest line or a missing audio file stops the step with the file and line
named, because a WER over part of a set is not comparable with one over all of it.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import cards, layout, storage
from components.evaluate.errors import EvaluateError
from components.manifest import ManifestError, iter_manifest
from components.progress import Progress

INPUT_DIR = "input"
"""``<set>/input``: a dataset input exported to FLAC + manifest.json."""
CHAMPION_DIR = "champion"
"""``champion/<set>``: the champion re-evaluated on the same sets, so no set may be called this."""

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_CARD_STEM = layout.CARD_NAME.rsplit(".", 1)[0]
# path parts that say nothing about which set it is
_GENERIC_PARTS = {
    layout.RAW_DIR,
    layout.TARRED_DIR,
    layout.AUDIO_DIR,
    layout.EVAL_DIR,
    layout.CARD_NAME,
    "manifests",
    "manifest",
    "data",
}


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """One eval set: a name (its directory under ``out_dir``) and the manifest to read."""

    name: str
    manifest: str
    source: str


@dataclasses.dataclass(frozen=True)
class Utterance:
    """One manifest entry with its audio resolved to a readable path."""

    line: int
    audio_uri: str  # absolute local path or gs:// URI: what hypotheses.jsonl records
    local_path: str  # where the model reads it (a local copy for gs:// audio)
    duration: float
    text: str
    offset: float | None = None


def split_set_spec(spec: str) -> tuple[str | None, str]:
    """``name=path`` -> (name, path); a plain path -> (None, path)."""
    name, sep, path = spec.partition("=")
    if sep and path and _SET_NAME.match(name):
        return name, path
    return None, spec


def default_set_name(path: str) -> str:
    """A set name from a path: the manifest's stem, else the nearest telling directory.

    ``…/dev-clean/manifest.json`` -> ``dev-clean``; ``…/test_other.json`` -> ``test_other``;
    under a data root, ``datasets/<dataset>/<config>/<split>/<revision>/raw`` ->
    ``<dataset>-<config>-<split>``.
    """
    parts = [part for part in re.split(r"[/\\]+", path.rstrip("/")) if part and part != "gs:"]
    if layout.DATASETS_DIR in parts:
        tail = parts[parts.index(layout.DATASETS_DIR) + 1 :]
        kept = [p for p in tail if not _REVISION.match(p) and p.lower() not in _GENERIC_PARTS]
        kept = [p for p in kept if not p.endswith((".json", ".jsonl"))]
        if kept:
            return _NOT_NAME.sub("_", "-".join(kept))
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        if index == len(parts) - 1 and part.endswith((".json", ".jsonl")):
            stem = part.rsplit(".", 1)[0]
            if "manifest" in stem.lower() or stem.lower() in _GENERIC_PARTS or stem == _CARD_STEM:
                continue
            part = stem
        if _REVISION.match(part) or part.lower() in _GENERIC_PARTS:
            continue
        return _NOT_NAME.sub("_", part).strip("_.") or "set"
    return "set"


def eval_set_specs(items: Sequence[Any]) -> list[str]:
    """Eval sets as the pipeline hands them over (strings or ``{name, manifest}`` objects) -> specs.

    A spec given twice (the validation set also listed among the eval sets) is kept once.

    Raises:
        EvaluateError: an item that is neither.
    """
    specs: list[str] = []
    for index, item in enumerate(items):
        if isinstance(item, str):
            specs.append(item)
        elif isinstance(item, dict) and isinstance(item.get("manifest"), str):
            specs.append(f"{item['name']}={item['manifest']}" if item.get("name") else item["manifest"])
        else:
            raise EvaluateError(
                f"eval_sets[{index}]: expected a URI, NAME=URI or {{name, manifest}}, got {item!r}"
            )
    return list(dict.fromkeys(specs))


def resolve_eval_sets(specs: Sequence[str], out_dir: str) -> list[EvalSet]:
    """Turn command-line eval set specs into named manifests.

    Args:
        specs: ``PATH`` or ``NAME=PATH``; PATH is a NeMo manifest, a parquet directory or a
            download card; the last two are exported (audio and manifest) once, to
            ``out_dir/<set>/input``, so that the hypotheses point at audio that stays.
        out_dir: the step's output directory.

    Raises:
        EvaluateError: a path that does not exist, a name used twice or a reserved name.
    """
    if not specs:
        raise EvaluateError("no eval sets given: pass at least one MANIFEST")
    sets: list[EvalSet] = []
    for spec in specs:
        name, path = split_set_spec(spec)
        name = name or default_set_name(path)
        if name == CHAMPION_DIR:
            raise EvaluateError(f"eval set {spec!r}: the name {CHAMPION_DIR!r} is reserved; use NAME=PATH")
        if any(existing.name == name for existing in sets):
            raise EvaluateError(
                f"eval set {spec!r}: the name {name!r} is used twice; name the sets with NAME=PATH"
            )
        if _is_manifest_file(path):
            manifest = path
        elif _is_dataset(path):
            manifest = _export(path, storage.join(out_dir, name, INPUT_DIR))
        else:
            raise EvaluateError(f"eval set {name!r}: no such manifest or dataset: {path}")
        sets.append(EvalSet(name=name, manifest=manifest, source=path))
    return sets


def _is_manifest_file(path: str) -> bool:
    return storage.basename(path) != layout.CARD_NAME and storage.stat(path) is not None


def _is_dataset(path: str) -> bool:
    """A download card, or a directory (local or a gs:// prefix) with files in it."""
    if storage.exists(path) or storage.exists(cards.card_uri(path)):
        return True
    if storage.is_gcs(path):
        return bool(storage.list_files(path))
    return Path(path).is_dir()


def _export(path: str, out_dir: str) -> str:
    """A downloaded dataset (parquet directory or download card) as a NeMo manifest."""
    from components.export import export_manifest
    from components.items import SourceError
    from components.manifest import RejectThresholdExceeded

    try:
        return str(export_manifest(path, out_dir))
    except (SourceError, RejectThresholdExceeded) as err:
        raise EvaluateError(f"eval set {path}: {err}") from None


def _resolve_audio(audio: str, manifest: str) -> str:
    if storage.is_gcs(audio) or Path(audio).is_absolute():
        return audio
    return storage.join(storage.parent(manifest), audio)


def load_utterances(eval_set: EvalSet, staging_dir: str, workers: int = 16) -> list[Utterance]:
    """Read a set's manifest, resolve its audio paths and fetch gs:// audio to ``staging_dir``.

    Raises:
        ManifestError: a malformed line (file and line named) or a manifest with no entries.
        EvaluateError: an audio file that does not exist (manifest line named).
    """
    manifest = eval_set.manifest
    if storage.stat(manifest) is None:
        raise EvaluateError(f"eval set {eval_set.name!r}: no such manifest: {manifest}")
    utterances: list[Utterance] = []
    remote: list[tuple[int, str, str]] = []
    for line_number, entry in iter_manifest(manifest):
        if isinstance(entry, ManifestError):
            raise entry
        audio_uri = _resolve_audio(entry["audio_filepath"], manifest)
        if storage.is_gcs(audio_uri):
            digest = hashlib.sha1(audio_uri.encode()).hexdigest()[:16]
            local = str(Path(staging_dir, "audio", digest, storage.basename(audio_uri)))
            remote.append((line_number, audio_uri, local))
        else:
            audio_uri = str(Path(audio_uri).resolve())
            local = audio_uri
            if not Path(local).is_file():
                raise EvaluateError(f"{manifest}:{line_number}: audio file not found: {audio_uri}")
        offset = entry.get("offset")
        utterances.append(
            Utterance(
                line=line_number,
                audio_uri=audio_uri,
                local_path=local,
                duration=float(entry["duration"]),
                text=entry["text"],
                offset=float(offset) if offset else None,
            )
        )
    if not utterances:
        raise ManifestError(f"{manifest}: the manifest has no entries")
    if remote:
        _fetch_audio(remote, manifest, eval_set.name, workers)
    return utterances


def _fetch_audio(remote: list[tuple[int, str, str]], manifest: str, name: str, workers: int) -> None:
    progress = Progress(f"evaluate {name}: fetch audio", total=len(remote))

    def fetch(item: tuple[int, str, str]) -> None:
        line_number, uri, local = item
        if Path(local).is_file():
            return
        if storage.stat(uri) is None:
            raise EvaluateError(f"{manifest}:{line_number}: audio file not found: {uri}")
        storage.download_file(uri, local)

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in pool.map(fetch, remote):
            progress.update()
    progress.finish()


def set_fingerprint(utterances: Sequence[Utterance]) -> str:
    """What was scored: audio identity (file name), duration, offset and reference text.

    Audio locations are left out (a set copied elsewhere is the same set); file names stay so
    that two sets with the same texts but other recordings differ.
    """
    digest = hashlib.sha256()
    for utt in utterances:
        record = [storage.basename(utt.audio_uri), utt.duration, utt.offset, utt.text]
        digest.update(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
    return digest.hexdigest()

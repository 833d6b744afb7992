"""Evaluate a NeMo ASR model on eval sets: transcripts, WER/CER, a report, champion promotion.

Each eval set is a NeMo manifest (audio paths absolute, ``gs://``, or relative to the
manifest's directory) or a downloaded dataset (parquet directory or download card), which
:func:`components.sources.export_manifest` turns into a manifest. Every utterance of a set is
scored: a bad manifest line or a missing audio file stops the step with the file and line
named, because a WER over part of a set is not comparable with one over all of it.

Scoring: references and hypotheses both go through :func:`components.manifest.normalize_text`
(the normalisation training uses), then jiwer counts hits, substitutions, insertions and
deletions over the whole set (corpus WER = (S + D + I) / (H + S + D); CER likewise over
characters, spaces included). The model chosen to serve is the one with the lowest mean of
the per-set WERs (each set weighs the same); see :func:`decide_promotion`.

Output layout under ``out_dir``::

    <set>/hypotheses.jsonl   one line per utterance: audio_filepath, duration, text, pred_text, wer, cer
    <set>/_SUCCESS           the model and set fingerprints these hypotheses belong to (resume)
    <set>/input/             a dataset input exported to FLAC + manifest.json (parquet or card inputs)
    champion/<set>/...       the champion re-evaluated on the same sets (with --champion)
    report.md                the table of sets and the worst utterances of each
    card.json, _SUCCESS      written last
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import math
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from components import cards, storage
from components.manifest import ManifestError, iter_manifest, manifest_line, normalize_text
from components.progress import Progress, format_seconds

log = logging.getLogger("asrflow.evaluate")

STEP = "evaluate"
HYPOTHESES_NAME = "hypotheses.jsonl"
REPORT_NAME = "report.md"
CHAMPION_NAME = "champion.json"
CHAMPION_DIR = "champion"
DEFAULT_MAX_WER = 0.9  # the promotion ceiling: above it a model is not fit for service
INPUT_DIR = "input"
SCORING = "normalize_text+jiwer-v1"
"""Names the scoring method; a recorded champion WER is reused only when it was scored the same way."""

_SET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_NOT_NAME = re.compile(r"[^A-Za-z0-9._-]+")
_REVISION = re.compile(r"^[0-9a-f]{40}$")
_GENERIC_PARTS = {"raw", "tarred", "audio", "manifests", "manifest", "data", "eval", "card.json"}


class EvaluateError(ValueError):
    """Bad input to the evaluate step; the message names the file, line or field."""


# --- eval sets -----------------------------------------------------------------------------


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
    if "datasets" in parts:
        tail = parts[parts.index("datasets") + 1 :]
        kept = [p for p in tail if not _REVISION.match(p) and p.lower() not in _GENERIC_PARTS]
        kept = [p for p in kept if not p.endswith((".json", ".jsonl"))]
        if kept:
            return _NOT_NAME.sub("_", "-".join(kept))
    for index in range(len(parts) - 1, -1, -1):
        part = parts[index]
        if index == len(parts) - 1 and part.endswith((".json", ".jsonl")):
            stem = part.rsplit(".", 1)[0]
            if "manifest" in stem.lower() or stem.lower() in _GENERIC_PARTS or stem == "card":
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


def run_eval_dir(data_root: str, run_id: str) -> str:
    """Where a run's evaluation goes under the data root: ``runs/<run_id>/eval``."""
    return storage.join(data_root, "runs", run_id, "eval")


def champion_uri_for(data_root: str, name: str) -> str:
    """The champion record of model ``name``: ``models/<name>/champion.json`` under the data root."""
    return storage.join(data_root, "models", name, CHAMPION_NAME)


def _is_manifest_file(path: str) -> bool:
    return storage.basename(path) != cards.CARD_NAME and storage.stat(path) is not None


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


def _is_dataset(path: str) -> bool:
    """A download card, or a directory (local or a gs:// prefix) with files in it."""
    if storage.exists(path) or storage.exists(cards.card_uri(path)):
        return True
    if storage.is_gcs(path):
        return bool(storage.list_files(path))
    return Path(path).is_dir()


def _export(path: str, out_dir: str) -> str:
    """A downloaded dataset (parquet directory or download card) as a NeMo manifest."""
    try:
        from components import sources
    except ModuleNotFoundError as err:
        if err.name != "components.sources":
            raise
        raise EvaluateError(
            f"{path} is not a manifest file, and this installation cannot export datasets "
            "(components.sources is missing); pass a NeMo manifest"
        ) from None
    from components.manifest import RejectThresholdExceeded

    try:
        return str(sources.export_manifest(path, out_dir))
    except (sources.SourceError, RejectThresholdExceeded) as err:
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


# --- scoring -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SetScore:
    """Corpus-level counts for one set (words and characters) and the error rates."""

    wer: float
    cer: float
    substitutions: int
    insertions: int
    deletions: int
    hits: int
    char_substitutions: int
    char_insertions: int
    char_deletions: int
    char_hits: int

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def score(references: Sequence[str], hypotheses: Sequence[str]) -> SetScore:
    """WER and CER of a whole set, after :func:`normalize_text` on both sides, by jiwer."""
    import jiwer

    refs = [normalize_text(text) for text in references]
    hyps = [normalize_text(text) for text in hypotheses]
    words = jiwer.process_words(refs, hyps)
    chars = jiwer.process_characters(refs, hyps)
    return SetScore(
        wer=float(words.wer),
        cer=float(chars.cer),
        substitutions=words.substitutions,
        insertions=words.insertions,
        deletions=words.deletions,
        hits=words.hits,
        char_substitutions=chars.substitutions,
        char_insertions=chars.insertions,
        char_deletions=chars.deletions,
        char_hits=chars.hits,
    )


def utterance_rates(reference: str, hypothesis: str) -> tuple[float, float, int]:
    """(WER, CER, word errors) of one utterance, normalised as :func:`score` does.

    An empty reference gives jiwer's figure: the number of inserted words (or characters).
    """
    import jiwer

    ref, hyp = normalize_text(reference), normalize_text(hypothesis)
    words = jiwer.process_words(ref, hyp)
    chars = jiwer.process_characters(ref, hyp)
    errors = words.substitutions + words.insertions + words.deletions
    return float(words.wer), float(chars.cer), errors


# --- transcription -------------------------------------------------------------------------


def pick_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; other values pass through."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


NEMO_CONFIG_NAME = "model_config.yaml"  # what every .nemo archive holds, beside its weights
WHAT_A_NEMO_IS = (
    "a NeMo model is a tar archive holding model_config.yaml and the weights, "
    "like the RUN_DIR/model.nemo that `asrflow train` writes"
)


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
            if any(Path(member.name).name == NEMO_CONFIG_NAME for member in tar):
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
        with open(manifest_path, "w", encoding="utf-8") as out:
            for i in chunk:
                utt = utterances[i]
                entry: dict[str, Any] = {"audio_filepath": utt.local_path, "duration": utt.duration}
                if utt.offset:
                    entry["offset"] = utt.offset
                entry["text"] = ""
                out.write(json.dumps(entry) + "\n")
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


# --- one model over all sets ---------------------------------------------------------------


@dataclasses.dataclass
class SetResult:
    """A set's score and where its hypotheses are."""

    eval_set: EvalSet
    fingerprint: str
    num_utterances: int
    hours: float
    score: SetScore
    hypotheses_uri: str
    worst: list[dict[str, Any]]

    def card(self) -> dict[str, Any]:
        return {
            "manifest": self.eval_set.manifest,
            "source": self.eval_set.source,
            "fingerprint": self.fingerprint,
            "num_utterances": self.num_utterances,
            "hours": round(self.hours, 6),
            **self.score.as_dict(),
            "hypotheses": self.hypotheses_uri,
        }


class ModelRunner:
    """Loads a model once, when the first set needs transcribing (finished sets need none)."""

    def __init__(self, model_uri: str, staging_dir: str, device: str, batch_size: int, num_workers: int):
        self.model_uri = model_uri
        self.staging_dir = staging_dir
        self.device = device
        self.batch_size = batch_size
        self.num_workers = num_workers
        self._local: str | None = None
        self._md5: str | None = None
        self._model: Any = None

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

    def model(self) -> Any:
        if self._model is None:
            log.info("evaluate: loading %s on %s", self.model_uri, self.device)
            self._model = load_model(self.local_path, self.device, shown_as=self.model_uri)
        return self._model

    def close(self) -> None:
        self._model = None


def _set_done_text(model_md5: str, fingerprint: str) -> str:
    return json.dumps(
        {"model_md5": model_md5, "fingerprint": fingerprint, "scoring": SCORING}, sort_keys=True
    )


def evaluate_set(
    runner: ModelRunner,
    eval_set: EvalSet,
    utterances: Sequence[Utterance],
    set_dir: str,
    worst: int,
    label: str,
) -> SetResult:
    """Transcribe one set (or reuse its finished hypotheses), score it, write hypotheses.jsonl."""
    fingerprint = set_fingerprint(utterances)
    hypotheses_uri = storage.join(set_dir, HYPOTHESES_NAME)
    done_uri = storage.join(set_dir, storage.SUCCESS_MARKER)
    done_text = _set_done_text(runner.md5, fingerprint)
    hours = sum(utt.duration for utt in utterances) / 3600
    predictions: list[str] | None = None
    if storage.exists(done_uri) and storage.read_text(done_uri) == done_text:
        predictions = _read_predictions(hypotheses_uri, len(utterances))
        if predictions is not None:
            log.info(
                "%s: hypotheses already made by this model on this set, reusing %s", label, hypotheses_uri
            )
    if predictions is None:
        storage.delete(done_uri)
        model = runner.model()
        progress = Progress(f"{label}: utterances", total=len(utterances))
        seconds = {"audio": 0.0}
        started = time.monotonic()

        def on_chunk(chunk: Sequence[Utterance]) -> None:
            seconds["audio"] += sum(utt.duration for utt in chunk)
            speed = seconds["audio"] / max(time.monotonic() - started, 1e-9)
            progress.update(len(chunk), audio_s_per_s=f"{speed:.1f}")

        with tempfile.TemporaryDirectory(prefix="transcribe-", dir=runner.staging_dir) as work:
            predictions = transcribe(model, utterances, runner.batch_size, runner.num_workers, work, on_chunk)
        progress.finish()
    rows = []
    for utt, prediction in zip(utterances, predictions, strict=True):
        wer, cer, errors = utterance_rates(utt.text, prediction)
        row: dict[str, Any] = {"audio_filepath": utt.audio_uri, "duration": utt.duration}
        if utt.offset:
            row["offset"] = utt.offset
        row.update(text=utt.text, pred_text=prediction, wer=wer, cer=cer, line=utt.line)
        rows.append((row, errors))
    if not storage.exists(done_uri):
        storage.write_text(hypotheses_uri, "".join(manifest_line(row) for row, _ in rows))
        storage.write_text(done_uri, done_text)
    set_score = score([utt.text for utt in utterances], predictions)
    worst_rows = sorted(rows, key=lambda item: (-item[0]["wer"], -item[1], item[0]["line"]))[:worst]
    log.info(
        "%s: %d utterances, %.2f h: WER %.2f%% CER %.2f%% (S %d, I %d, D %d)",
        label,
        len(utterances),
        hours,
        100 * set_score.wer,
        100 * set_score.cer,
        set_score.substitutions,
        set_score.insertions,
        set_score.deletions,
    )
    return SetResult(
        eval_set=eval_set,
        fingerprint=fingerprint,
        num_utterances=len(utterances),
        hours=hours,
        score=set_score,
        hypotheses_uri=hypotheses_uri,
        worst=[row for row, _ in worst_rows],
    )


def _read_predictions(uri: str, expected: int) -> list[str] | None:
    if storage.stat(uri) is None:
        return None
    rows = [json.loads(line) for line in storage.read_text(uri).splitlines() if line.strip()]
    if len(rows) != expected or not all(isinstance(row.get("pred_text"), str) for row in rows):
        return None
    return [row["pred_text"] for row in rows]


def evaluate_model(
    runner: ModelRunner,
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    worst: int,
    who: str = "model",
) -> dict[str, SetResult]:
    """Every set in turn under ``out_dir/<set>``; returns the results by set name."""
    results = {}
    for index, (eval_set, utterances) in enumerate(sets, start=1):
        label = f"evaluate {who} set {index}/{len(sets)} {eval_set.name}"
        set_dir = storage.join(out_dir, eval_set.name)
        results[eval_set.name] = evaluate_set(runner, eval_set, utterances, set_dir, worst, label)
    return results


def mean_wer(results: dict[str, Any]) -> float:
    """The unweighted mean of per-set WERs (each set counts the same, whatever its size)."""
    values = [float(r.score.wer if isinstance(r, SetResult) else r["wer"]) for r in results.values()]
    return math.fsum(values) / len(values)


# --- champion ------------------------------------------------------------------------------


def read_champion(uri: str) -> dict[str, Any] | None:
    """The champion record at ``uri``, or None when there is none yet.

    Raises:
        EvaluateError: a record that is not JSON or lacks ``model`` / ``sets``.
    """
    if storage.stat(uri) is None:
        return None
    try:
        record = json.loads(storage.read_text(uri))
    except json.JSONDecodeError as err:
        raise EvaluateError(f"{uri}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("model"), str):
        raise EvaluateError(f"{uri}: a champion record needs a string field 'model'")
    if not isinstance(record.get("sets"), dict):
        raise EvaluateError(f"{uri}: a champion record needs an object field 'sets' (WER per set)")
    for name, entry in record["sets"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("wer"), (int, float)):
            raise EvaluateError(f"{uri}: sets.{name}.wer must be a number")
    return record


def recorded_results_usable(champion: dict[str, Any], results: dict[str, SetResult]) -> bool:
    """True when the champion's recorded WERs were measured on exactly these sets, scored alike."""
    if champion.get("scoring") != SCORING:
        return False
    recorded = champion["sets"]
    return all(
        name in recorded and recorded[name].get("fingerprint") == result.fingerprint
        for name, result in results.items()
    )


def decide_promotion(new_mean: float, champion_mean: float, min_improvement: float = 0.0) -> tuple[bool, str]:
    """Promote when the new mean WER is lower by more than ``min_improvement`` (absolute).

    A tie (or a gain not above ``min_improvement``) keeps the champion: the model in service
    changes only for a measured gain.
    """
    if new_mean < champion_mean - min_improvement:
        return True, (
            f"mean WER {100 * new_mean:.2f}% is lower than the champion's {100 * champion_mean:.2f}%"
        )
    if new_mean == champion_mean:
        return False, f"mean WER {100 * new_mean:.2f}% ties the champion's; a tie keeps the champion"
    if new_mean < champion_mean:
        return False, (
            f"mean WER {100 * new_mean:.2f}% beats the champion's {100 * champion_mean:.2f}% by less "
            f"than --min-improvement {100 * min_improvement:.2f} points"
        )
    return (
        False,
        f"mean WER {100 * new_mean:.2f}% is not lower than the champion's {100 * champion_mean:.2f}%",
    )


def champion_record(
    model_uri: str, model_md5: str, results: dict[str, SetResult], out_dir: str
) -> dict[str, Any]:
    """What champion.json holds: the model, its WER per set (with set fingerprints), and where from."""
    return {
        "model": model_uri,
        "model_md5": model_md5,
        "mean_wer": mean_wer(results),
        "scoring": SCORING,
        "evaluation": cards.card_uri(out_dir),
        "sets": {
            name: {
                "wer": result.score.wer,
                "cer": result.score.cer,
                "num_utterances": result.num_utterances,
                "hours": round(result.hours, 6),
                "fingerprint": result.fingerprint,
            }
            for name, result in results.items()
        },
    }


def _champion_uri(uri: str) -> str:
    return uri if uri.endswith(".json") else storage.join(uri, CHAMPION_NAME)


def run_champion(
    champion_uri: str,
    model_uri: str,
    runner: ModelRunner,
    results: dict[str, SetResult],
    sets: Sequence[tuple[EvalSet, Sequence[Utterance]]],
    out_dir: str,
    staging_dir: str,
    device: str,
    worst: int,
    min_improvement: float,
    reevaluate: bool,
    max_wer: float = DEFAULT_MAX_WER,
) -> tuple[dict[str, Any], dict[str, SetResult] | None]:
    """Compare with the champion at ``champion_uri``; write a new champion.json if better.

    Returns the card's ``champion`` section and the champion's re-evaluated results (None
    when its recorded figures were used or there was no champion).
    """
    new_mean = mean_wer(results)
    section: dict[str, Any] = {
        "uri": champion_uri,
        "mean_wer": new_mean,
        "min_improvement": min_improvement,
        "max_wer": max_wer,
    }
    champion = read_champion(champion_uri)
    champion_results: dict[str, SetResult] | None = None
    if new_mean > max_wer:
        # Checked first: a model this bad is never put in service, champion or not.
        promoted, source = False, "not-compared"
        reason = f"mean WER {_pct(new_mean)} is above the promotion ceiling {_pct(max_wer)} (--max-wer)"
        if champion is not None:
            section["previous_model"] = champion["model"]
    elif champion is None:
        promoted, reason, source = True, "there was no champion yet", "none"
    elif champion.get("model_md5") == runner.md5:
        promoted, reason, source = False, "this model is the champion already (same .nemo MD5)", "same-model"
        section["previous_model"] = champion["model"]
    else:
        section["previous_model"] = champion["model"]
        if not reevaluate and recorded_results_usable(champion, results):
            source = "recorded"
            champion_wers = {name: float(champion["sets"][name]["wer"]) for name in results}
            log.info(
                "evaluate: champion %s was measured on these same sets; using its recorded WER",
                champion["model"],
            )
        else:
            source = "re-evaluated"
            why = "asked to" if reevaluate else "its recorded WER is not from these same sets"
            log.info("evaluate: re-evaluating champion %s on these sets (%s)", champion["model"], why)
            champion_runner = ModelRunner(
                champion["model"], staging_dir, device, runner.batch_size, runner.num_workers
            )
            try:
                champion_results = evaluate_model(
                    champion_runner, sets, storage.join(out_dir, CHAMPION_DIR), worst, who="champion"
                )
            finally:
                champion_runner.close()
            champion_wers = {name: r.score.wer for name, r in champion_results.items()}
        champion_mean = math.fsum(champion_wers.values()) / len(champion_wers)
        section["previous_mean_wer"] = champion_mean
        section["previous_sets"] = {name: {"wer": wer} for name, wer in champion_wers.items()}
        if champion_results is not None:
            for name, r in champion_results.items():
                section["previous_sets"][name]["cer"] = r.score.cer
        promoted, reason = decide_promotion(new_mean, champion_mean, min_improvement)
    section.update(promoted=promoted, reason=reason, champion_source=source)
    if promoted:
        record = champion_record(model_uri, runner.md5, results, out_dir)
        storage.write_text(champion_uri, json.dumps(record, sort_keys=True, indent=2) + "\n")
        log.info("evaluate: %s is the new champion: %s; wrote %s", model_uri, reason, champion_uri)
    else:
        log.info("evaluate: champion kept: %s; %s untouched", reason, champion_uri)
    return section, champion_results


# --- report --------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def _cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ") or "∅"


def render_report(
    model_uri: str,
    results: dict[str, SetResult],
    champion: dict[str, Any] | None,
    champion_results: dict[str, SetResult] | None,
) -> str:
    """The Markdown report: a table of sets, the champion decision, the worst utterances."""
    lines = [f"# Evaluation of `{model_uri}`", ""]
    lines += [
        "WER and CER after the shared text normalisation (lower case, punctuation dropped), "
        "counted by jiwer over each whole set.",
        "",
        "| Set | Utterances | Hours | WER | CER | Subst. | Ins. | Del. | Hits |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        s = r.score
        lines.append(
            f"| {name} | {r.num_utterances} | {r.hours:.2f} | {_pct(s.wer)} | {_pct(s.cer)} "
            f"| {s.substitutions} | {s.insertions} | {s.deletions} | {s.hits} |"
        )
    lines += ["", f"Mean WER over the sets: **{_pct(mean_wer(results))}**", ""]
    if champion is not None:
        verdict = "promoted to champion" if champion["promoted"] else "not promoted"
        lines += ["## Champion", "", f"**{verdict}**: {champion['reason']}.", ""]
        if "previous_model" in champion:
            how = {
                "recorded": "its WER as recorded in the champion file, measured on these same sets",
                "re-evaluated": "re-evaluated here on the same sets",
                "same-model": "the same model file",
                "not-compared": "not compared: this model is above the promotion ceiling",
            }[champion["champion_source"]]
            lines.append(f"Champion compared: `{champion['previous_model']}` ({how}).")
            lines.append("")
        if champion.get("previous_sets"):
            lines += ["| Set | This model WER | Champion WER |", "|---|---:|---:|"]
            for name, r in results.items():
                lines.append(
                    f"| {name} | {_pct(r.score.wer)} | {_pct(champion['previous_sets'][name]['wer'])} |"
                )
            lines.append("")
    for name, r in results.items():
        lines += [f"## Worst utterances: {name}", ""]
        lines += ["| WER | Reference | Hypothesis | Audio |", "|---:|---|---|---|"]
        for row in r.worst:
            ref, hyp = normalize_text(row["text"]), normalize_text(row["pred_text"])
            audio = storage.basename(row["audio_filepath"])
            lines.append(f"| {_pct(row['wer'])} | {_cell(ref)} | {_cell(hyp)} | {_cell(audio)} |")
        lines.append("")
    if champion_results:
        lines += [f"Champion hypotheses: `{CHAMPION_DIR}/<set>/{HYPOTHESES_NAME}`.", ""]
    return "\n".join(lines)


# --- the step ------------------------------------------------------------------------------


def evaluate(
    model_uri: str,
    eval_sets: Sequence[str],
    out_dir: str,
    champion_uri: str | None = None,
    batch_size: int = 16,
    device: str = "auto",
    num_workers: int | None = None,
    worst: int = 10,
    min_improvement: float = 0.0,
    reevaluate_champion: bool = False,
    max_wer: float = DEFAULT_MAX_WER,
    echo: bool = True,
) -> dict[str, Any]:
    """Evaluate a .nemo model on eval sets; write hypotheses, report.md and card.json.

    Args:
        model_uri: the .nemo file, local or gs://.
        eval_sets: ``PATH`` or ``NAME=PATH`` each: a NeMo manifest, parquet directory or
            download card.
        out_dir: where the outputs go (local or gs://).
        champion_uri: a champion.json (e.g. ``DATA_ROOT/models/<name>/champion.json``): when
            given, the model is compared with the champion and replaces it only when better.
        batch_size: utterances per forward pass.
        device: ``auto`` (GPU when present), ``cpu`` or ``cuda[:N]``.
        num_workers: dataloader workers (default: 0 on CPU, 4 on GPU).
        worst: how many worst utterances the report lists per set.
        min_improvement: absolute mean-WER gain a new model needs to be promoted (0.01 = 1 point).
        reevaluate_champion: re-evaluate the champion even when its recorded WER is from the same sets.
        max_wer: a model whose mean WER is above this is never promoted, even with no champion.
        echo: print the card as the last stdout line.

    Returns:
        The card (also written to ``out_dir/card.json``).
    """
    if batch_size < 1:
        raise EvaluateError(f"--batch-size must be at least 1, got {batch_size}")
    device = pick_device(device)
    if num_workers is None:
        num_workers = 0 if device == "cpu" else 4
    started = time.monotonic()
    if not storage.is_gcs(model_uri):  # a wrong file is named before any audio is read
        if not Path(model_uri).is_file():
            raise EvaluateError(f"no such model: {model_uri}")
        check_nemo_archive(model_uri)
    with tempfile.TemporaryDirectory(prefix="asrflow-evaluate-") as staging:
        specs = resolve_eval_sets(eval_sets, out_dir)
        sets = [(eval_set, load_utterances(eval_set, staging)) for eval_set in specs]
        if storage.is_gcs(model_uri):
            model_key = model_uri
        else:
            model_key = str(Path(model_uri).resolve())
        runner = ModelRunner(model_key, staging, device, batch_size, num_workers)
        results = evaluate_model(runner, sets, out_dir, worst)
        runner.close()
        champion_section = champion_results = None
        if champion_uri:
            champion_section, champion_results = run_champion(
                _champion_uri(champion_uri),
                model_key,
                runner,
                results,
                sets,
                out_dir,
                staging,
                device,
                worst,
                min_improvement,
                reevaluate_champion,
                max_wer,
            )
        report_uri = storage.join(out_dir, REPORT_NAME)
        storage.write_text(report_uri, render_report(model_key, results, champion_section, champion_results))
        card: dict[str, Any] = {
            "step": STEP,
            "model": model_key,
            "model_md5": runner.md5,
            "device": device,
            "scoring": SCORING,
            "sets": {name: result.card() for name, result in results.items()},
            "mean_wer": mean_wer(results),
            "report": report_uri,
            "champion": champion_section,
        }
    total_hours = sum(r.hours for r in results.values())
    log.info(
        "evaluate: %d set(s), %.2f h of audio in %s; mean WER %.2f%%",
        len(results),
        total_hours,
        format_seconds(time.monotonic() - started),
        100 * card["mean_wer"],
    )
    cards.write_card(out_dir, card, echo=echo)
    storage.mark_complete(out_dir)
    return card

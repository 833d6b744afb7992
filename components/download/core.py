"""Download a speech dataset into ``data_root``: verified, parallel, streaming, resumable.

Sources:

* a dataset on the Hugging Face hub, ``hf://datasets/OWNER/NAME`` (``--revision`` is resolved
  to a commit SHA; the token comes from ``HF_TOKEN`` and is never logged);
* a local directory or ``gs://`` prefix with the hub's parquet layout
  (``<root>/<config>/<split>-00000-of-00004.parquet``, or whatever the ``configs`` of its
  ``README.md`` say); its revision is a hash of the file listing (names, sizes, checksums),
  so new data means a new key;
* a NeMo manifest (``.json``/``.jsonl``) whose audio files are copied beside it.

Output under ``out``: the data files under their relative paths (audio under ``audio/`` and
``manifest.json`` for a manifest source), ``card.json``, and ``_SUCCESS`` written last. Each
file is written atomically and checked against the source's size and checksum (MD5 or CRC32C
on GCS, SHA-256 for hub LFS files, the git blob hash for small hub files). A rerun skips the
files that check out, redoes the others, and never counts a temporary file.

``out`` must be empty or hold an earlier download (its ``_ASRFLOW`` marker); a download holds
its lock while it writes (:mod:`components.storage`), so a second one fails at once.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import dataclasses
import hashlib
import io
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from components import cards, manifest, storage
from components.progress import format_seconds

log = logging.getLogger("asrflow.download")

STEP = "download"
HF_DATASETS = "hf://datasets/"
PARQUET = "parquet"
MANIFEST = "manifest"
MANIFEST_NAME = "manifest.json"
AUDIO_DIR = "audio"
STAGING_NAME = storage.TEMP_PREFIX + "staging"
DEFAULT_CONFIG = "default"
DEFAULT_SPLIT = "train"
DURATION_CANDIDATES = ("duration_ms", "duration")
MB = 1_000_000

T = TypeVar("T")
R = TypeVar("R")


class DownloadError(ValueError):
    """A source or option that cannot work; the message names the file, column or path."""


@dataclasses.dataclass(frozen=True)
class Columns:
    """Which parquet columns hold what; recorded in the card so write-shards reads the same.

    Attributes:
        id: the utterance id.
        audio: the audio (a struct with ``bytes``, as the hub's Audio feature stores it).
        text: the transcript.
        duration: the duration: seconds, or milliseconds when the name ends in ``_ms``. None:
            ``duration_ms`` or ``duration`` when present, else measured from the audio headers.
    """

    id: str = "id"
    audio: str = "audio"
    text: str = "text"
    duration: str | None = None


@dataclasses.dataclass(frozen=True)
class SourceFile:
    """One file to copy.

    Attributes:
        path: its path relative to the dataset root ('/'-separated), and so below ``out``.
        uri: where to read it: a local path or gs:// URI; for the hub, its path in the repo.
        size: its size in bytes.
        algorithm: the checksum the source gives: md5, crc32c, sha256 or git-sha1.
        digest: that checksum, as hex.
    """

    path: str
    uri: str
    size: int
    algorithm: str
    digest: str


@dataclasses.dataclass
class Plan:
    """What a download copies and how the result is named; made before anything is copied."""

    source: str
    kind: str  # hub | local | gcs | manifest
    dataset: str
    config: str
    split: str
    revision: str
    format: str
    files: list[SourceFile]
    repo_id: str | None = None
    entries: list[dict[str, Any]] | None = None  # manifest entries, audio paths relative to out


# --- naming ------------------------------------------------------------------------------


def dataset_key(dataset: str, config: str, split: str, revision: str) -> str:
    """The key of a download below ``data_root``: ``datasets/<dataset>/<config>/<split>/<revision>/raw``.

    A hub repo id's '/' becomes '--' (as in the hub's own cache), so that the dataset is one
    path segment.
    """
    parts = [dataset.replace("/", "--"), config, split, revision]
    for part in parts:
        if not part or part in (".", "..") or "/" in part or part.startswith(storage.TEMP_PREFIX):
            raise DownloadError(f"cannot use {part!r} in a data_root key ({'/'.join(parts)})")
    return "/".join(["datasets", *parts, "raw"])


def source_kind(source: str) -> str:
    """``hub``, ``gcs``, ``local`` or ``manifest``; an unknown scheme is an error."""
    if source.startswith("hf://"):
        if not source.startswith(HF_DATASETS):
            raise DownloadError(f"unsupported hub source {source!r}: use hf://datasets/OWNER/NAME")
        return "hub"
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", source)
    if scheme and not storage.is_gcs(source):
        raise DownloadError(
            f"unknown source scheme {scheme.group(1)}:// in {source!r}; expected "
            "hf://datasets/OWNER/NAME, gs://BUCKET/PREFIX, a local directory, or a NeMo manifest "
            "(.json or .jsonl)"
        )
    if source.endswith((".json", ".jsonl")):
        return MANIFEST
    return "gcs" if storage.is_gcs(source) else "local"


def parse_hub_source(source: str) -> tuple[str, str | None]:
    """``hf://datasets/OWNER/NAME[@REVISION]`` -> (``OWNER/NAME``, REVISION or None)."""
    rest = source[len(HF_DATASETS) :].strip("/")
    repo_id, _, revision = rest.partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo_id):
        raise DownloadError(f"not a hub dataset: {source!r} (expected hf://datasets/OWNER/NAME)")
    return repo_id, revision or None


def content_revision(files: Iterable[SourceFile]) -> str:
    """A 40-hex revision for a local or gs:// source: a hash of the names, sizes and checksums."""
    digest = hashlib.sha1()
    for file in sorted(files, key=lambda f: f.path):
        digest.update(f"{file.path}\t{file.size}\t{file.algorithm}:{file.digest}\n".encode())
    return digest.hexdigest()


# --- choosing data files (the same rules for the hub and for copies of it) ----------------


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A glob as the hub's ``data_files`` mean it: ``*`` and ``?`` stay inside one directory,
    ``**`` crosses directories."""
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def readme_configs(readme: str) -> list[dict[str, Any]] | None:
    """The ``configs`` list from a dataset card's YAML header, or None when it has none."""
    import yaml

    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", readme, re.DOTALL)
    if not match:
        return None
    try:
        header = yaml.safe_load(match.group(1)) or {}
    except yaml.YAMLError as err:
        raise DownloadError(f"README.md: the YAML header does not parse: {err}") from None
    configs = header.get("configs") if isinstance(header, dict) else None
    return configs if isinstance(configs, list) and configs else None


def _split_patterns(data_files: Any) -> dict[str, list[str]]:
    """A card's ``data_files`` (a string, a list, a list of {split, path} or a mapping) by split."""
    if isinstance(data_files, str):
        return {DEFAULT_SPLIT: [data_files]}
    if isinstance(data_files, dict):
        return {split: [p] if isinstance(p, str) else list(p) for split, p in data_files.items()}
    out: dict[str, list[str]] = {}
    for item in data_files or []:
        if isinstance(item, str):
            out.setdefault(DEFAULT_SPLIT, []).append(item)
        elif isinstance(item, dict) and "path" in item:
            path = item["path"]
            out.setdefault(item.get("split", DEFAULT_SPLIT), []).extend(
                [path] if isinstance(path, str) else path
            )
    return out


def default_patterns(config: str, split: str) -> list[str]:
    """Where data files are when no card says: the hub's parquet conventions."""
    patterns = [
        f"{config}/{split}-*.parquet",
        f"{config}/{split}/**/*.parquet",
        f"{config}/{split}.parquet",
    ]
    if config == DEFAULT_CONFIG:
        patterns += [f"data/{split}-*.parquet", f"{split}-*.parquet", f"{split}/**/*.parquet"]
    return patterns


def describe_layout(paths: Iterable[str]) -> str:
    """The parquet files there are, grouped like ``clean/train-*-of-*.parquet (4 files)``."""
    groups: dict[str, int] = {}
    for path in paths:
        if not path.endswith(".parquet"):
            continue
        directory, _, name = path.rpartition("/")
        key = (f"{directory}/" if directory else "") + re.sub(r"\d+", "*", name)
        groups[key] = groups.get(key, 0) + 1
    if not groups:
        return "no parquet files at all"
    return ", ".join(f"{key} ({n} file{'s' if n > 1 else ''})" for key, n in sorted(groups.items()))


def choose_config(configs: list[dict[str, Any]] | None, paths: Sequence[str]) -> str:
    """The config to use when none is given: the only one, or the card's default."""
    if configs:
        names = [str(entry.get("config_name", DEFAULT_CONFIG)) for entry in configs]
        defaults = [str(e.get("config_name", DEFAULT_CONFIG)) for e in configs if e.get("default")]
        if defaults:
            return defaults[0]
        if len(names) == 1 or DEFAULT_CONFIG in names:
            return names[0] if len(names) == 1 else DEFAULT_CONFIG
        raise DownloadError(f"give --config: the dataset card lists configs {', '.join(names)}")
    parquet = [p for p in paths if p.endswith(".parquet")]
    tops = sorted({p.split("/", 1)[0] for p in parquet if "/" in p})
    if any("/" not in p or p.startswith("data/") for p in parquet):
        return DEFAULT_CONFIG
    if len(tops) == 1:
        return tops[0]
    raise DownloadError(f"give --config: found {describe_layout(paths)}")


def select_files(
    paths: Sequence[str],
    config: str,
    split: str,
    configs: list[dict[str, Any]] | None = None,
    pattern: str | None = None,
) -> list[str]:
    """The parquet files of one config and split, sorted.

    ``pattern`` (``{config}`` and ``{split}`` are filled in) wins; else the card's
    ``configs``; else :func:`default_patterns`. Finding none is an error that lists what the
    source has.
    """
    if pattern:
        patterns = [pattern.format(config=config, split=split)]
        origin = f"--pattern {patterns[0]}"
    elif configs:
        by_name = {str(entry.get("config_name", DEFAULT_CONFIG)): entry for entry in configs}
        if config not in by_name:
            raise DownloadError(f"config {config!r} is not in the dataset card; it has {', '.join(by_name)}")
        splits = _split_patterns(by_name[config].get("data_files"))
        if split not in splits:
            raise DownloadError(f"config {config!r} has no split {split!r}; it has {', '.join(splits)}")
        patterns = splits[split]
        origin = f"the dataset card ({', '.join(patterns)})"
    else:
        patterns = default_patterns(config, split)
        origin = f"the usual layout ({patterns[0]})"
    regexes = [glob_regex(p) for p in patterns]
    chosen = sorted(p for p in paths if p.endswith(".parquet") and any(r.match(p) for r in regexes))
    if not chosen:
        raise DownloadError(
            f"no parquet files for config {config!r}, split {split!r} by {origin}; "
            f"the source has {describe_layout(paths)}"
        )
    return chosen


# --- checksums ---------------------------------------------------------------------------


class _Crc32c:
    def __init__(self) -> None:
        import google_crc32c

        self._checksum = google_crc32c.Checksum()

    def update(self, data: bytes) -> None:
        self._checksum.update(data)

    def hexdigest(self) -> str:
        return self._checksum.digest().hex()


def new_hash(algorithm: str, size: int) -> Any:
    """A running hash for a source checksum algorithm (``update``, ``hexdigest``)."""
    if algorithm == "md5":
        return hashlib.md5()
    if algorithm == "sha256":
        return hashlib.sha256()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm == "git-sha1":
        digest = hashlib.sha1()
        digest.update(b"blob %d\0" % size)
        return digest
    raise ValueError(f"unknown checksum algorithm {algorithm!r}")


def hash_uri(uri: str, algorithm: str, size: int) -> str:
    """Hash a file by streaming it (never whole in memory)."""
    digest = new_hash(algorithm, size)
    with storage.open_read(uri) as stream:
        for chunk in iter(lambda: stream.read(storage.CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


CHECKSUM_METADATA = "asrflow-source-"


def _gcs_metadata(uri: str) -> dict[str, str]:
    bucket, name = storage.split_gcs(uri)
    blob = storage.gcs_client().bucket(bucket).get_blob(name)
    return dict(blob.metadata or {}) if blob is not None else {}


def record_checksum(uri: str, file: SourceFile) -> None:
    """Note the source checksum on a GCS object that GCS cannot check itself (SHA-256, git),
    so a rerun verifies it without reading the object back. GCS checked the upload's CRC32C
    against the local file, and the local file was checked against this checksum."""
    bucket, name = storage.split_gcs(uri)
    blob = storage.gcs_client().bucket(bucket).blob(name)
    blob.metadata = {CHECKSUM_METADATA + file.algorithm: file.digest}
    blob.patch()


def is_complete_copy(uri: str, file: SourceFile) -> bool:
    """True when ``uri`` holds exactly ``file``: same size and same checksum.

    Uses the checksums GCS keeps (MD5, CRC32C) or one recorded by :func:`record_checksum`
    where they fit; otherwise reads the file and hashes it.
    """
    info = storage.stat(uri)
    if info is None or info.size != file.size:
        return False
    if file.algorithm == "md5" and info.md5 is not None:
        return info.md5 == file.digest
    if file.algorithm == "crc32c" and info.crc32c is not None:
        return info.crc32c == file.digest
    if storage.is_gcs(uri):
        recorded = _gcs_metadata(uri).get(CHECKSUM_METADATA + file.algorithm)
        if recorded is not None:
            return recorded == file.digest
    return hash_uri(uri, file.algorithm, file.size) == file.digest


# --- listing sources ---------------------------------------------------------------------


def _relative_listing(root: str) -> dict[str, storage.FileInfo]:
    prefix = root.rstrip("/") + "/" if storage.is_gcs(root) else str(Path(root)) + os.sep
    return {info.uri[len(prefix) :].replace(os.sep, "/"): info for info in storage.list_files(root)}


def _checksummed(path: str, info: storage.FileInfo) -> SourceFile:
    if info.md5 is not None:
        return SourceFile(path, info.uri, info.size, "md5", info.md5)
    if info.crc32c is not None:
        return SourceFile(path, info.uri, info.size, "crc32c", info.crc32c)
    return SourceFile(path, info.uri, info.size, "md5", storage.file_md5(info.uri))


def plan_tree(
    source: str,
    config: str | None,
    split: str,
    revision: str | None,
    pattern: str | None,
    dataset: str | None,
    workers: int,
) -> Plan:
    """Plan a copy of a local directory or gs:// prefix that has the hub's parquet layout."""
    kind = source_kind(source)
    if kind == "local" and not Path(source).is_dir():
        raise DownloadError(f"no such directory: {source}")
    listing = _relative_listing(source)
    if not listing:
        raise DownloadError(f"{source} is empty")
    configs = readme_configs(storage.read_text(listing["README.md"].uri)) if "README.md" in listing else None
    paths = sorted(listing)
    config = config or choose_config(None if pattern else configs, paths)
    chosen = select_files(paths, config, split, configs, pattern)
    if not storage.is_gcs(source):
        megabytes = sum(listing[p].size for p in chosen) / MB
        log.info("download: checksumming %d local files (%.1f MB)", len(chosen), megabytes)
    files = parallel_map(lambda p: _checksummed(p, listing[p]), chosen, workers)
    computed = content_revision(files)
    if revision and revision != computed:
        raise DownloadError(f"--revision {revision} was asked for, but {source} has revision {computed}")
    name = dataset or storage.basename(source.rstrip("/")) or "dataset"
    return Plan(source, kind, name, config, split, computed, PARQUET, files)


def hub_endpoint() -> str | None:
    """``HF_ENDPOINT`` (a hub mirror), read when used rather than when huggingface_hub loads."""
    return os.environ.get("HF_ENDPOINT") or None


def hub_network_errors() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when the hub does not answer (its HTTP client's errors)."""
    import importlib

    found: list[type[BaseException]] = [ConnectionError, TimeoutError]  # OfflineModeIsEnabled too
    for module_name in ("httpx2", "httpx"):  # whichever client this huggingface_hub uses
        try:
            found.append(importlib.import_module(module_name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def resolve_hub(
    repo_id: str, revision: str | None, token: str | None
) -> tuple[str, list[dict[str, Any]] | None, dict[str, SourceFile]]:
    """Ask the hub for the commit SHA of ``revision``, the card's configs and every file.

    Returns:
        (commit SHA, ``configs`` of the dataset card or None, files by path in the repo).
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.hf_api import RepoFile

    api = HfApi(endpoint=hub_endpoint(), token=token)
    try:
        info = api.dataset_info(repo_id, revision=revision)
        if not info.sha:
            raise DownloadError(f"the hub gave no commit for {repo_id}@{revision or 'main'}")
        tree = list(api.list_repo_tree(repo_id, repo_type="dataset", revision=info.sha, recursive=True))
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = " (is HF_TOKEN set to a token that may read it?)" if status in (401, 403) else ""
        first_line = str(err).strip().splitlines()[0]
        raise DownloadError(f"hub dataset {repo_id}@{revision or 'main'}: {first_line}{hint}") from err
    except hub_network_errors() as err:
        endpoint = hub_endpoint() or constants.ENDPOINT
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DownloadError(
            f"cannot reach the Hugging Face hub at {endpoint} for dataset {repo_id}: {reason}; check "
            "HF_ENDPOINT (unset it for huggingface.co), the network or proxy, and HF_TOKEN"
        ) from err
    card = info.card_data.to_dict() if info.card_data is not None else {}
    configs = card.get("configs") if isinstance(card.get("configs"), list) else None
    files = {}
    for entry in tree:
        if isinstance(entry, RepoFile):
            if entry.lfs is not None:
                files[entry.path] = SourceFile(entry.path, entry.path, entry.size, "sha256", entry.lfs.sha256)
            else:
                files[entry.path] = SourceFile(entry.path, entry.path, entry.size, "git-sha1", entry.blob_id)
    return info.sha, configs, files


def plan_hub(
    source: str,
    config: str | None,
    split: str,
    revision: str | None,
    pattern: str | None,
    dataset: str | None,
    token: str | None,
) -> Plan:
    """Plan a download from the hub: resolve the revision to a commit, choose the files."""
    repo_id, source_revision = parse_hub_source(source)
    if revision and source_revision and revision != source_revision:
        raise DownloadError(f"two revisions given: {source_revision} in SOURCE and --revision {revision}")
    sha, configs, files = resolve_hub(repo_id, revision or source_revision, token)
    paths = sorted(files)
    config = config or choose_config(None if pattern else configs, paths)
    chosen = select_files(paths, config, split, configs, pattern)
    name = dataset or repo_id
    return Plan(source, "hub", name, config, split, sha, PARQUET, [files[p] for p in chosen], repo_id=repo_id)


def _resolve_audio(path: str, base: str) -> str:
    """An audio path as NeMo reads it: relative paths are relative to the manifest's directory."""
    if storage.is_gcs(path):
        return path
    uri = path if os.path.isabs(path) else storage.join(base, path)
    return uri if storage.is_gcs(uri) else os.path.abspath(uri)


def _common_dir(uris: Sequence[str]) -> str:
    if all(storage.is_gcs(u) for u in uris):
        parts = [u[len(storage.GCS_SCHEME) :].split("/")[:-1] for u in uris]
        common = parts[0]
        for other in parts[1:]:
            n = 0
            while n < min(len(common), len(other)) and common[n] == other[n]:
                n += 1
            common = common[:n]
        if not common:
            raise DownloadError("the manifest's gs:// audio files are in more than one bucket")
        return storage.GCS_SCHEME + "/".join(common)
    if any(storage.is_gcs(u) for u in uris):
        raise DownloadError("the manifest mixes gs:// and local audio files; copy them into one place first")
    return os.path.commonpath([os.path.dirname(os.path.abspath(u)) for u in uris])


def plan_manifest(
    source: str, split: str, revision: str | None, dataset: str | None, config: str | None, workers: int
) -> Plan:
    """Plan a copy of a NeMo manifest and its audio files (``audio/…`` below ``out``)."""
    if not storage.exists(source):
        raise DownloadError(f"no such manifest: {source}")
    entries = manifest.read_manifest(source)
    if not entries:
        raise DownloadError(f"{source}: the manifest has no entries")
    base = storage.parent(source)
    uris = [_resolve_audio(entry["audio_filepath"], base) for entry in entries]
    distinct = sorted(set(uris))
    root = _common_dir(distinct)
    if storage.is_gcs(root):
        relative = {uri: f"{AUDIO_DIR}/{uri[len(root) + 1 :]}" for uri in distinct}
        listing = {info.uri: info for info in storage.list_files(root)}
    else:
        relative = {uri: f"{AUDIO_DIR}/{Path(os.path.relpath(uri, root)).as_posix()}" for uri in distinct}
        listing = {}
    where = {uri: line for line, uri in reversed(list(enumerate(uris, start=1)))}

    def describe(uri: str) -> SourceFile:
        info = listing.get(uri) if storage.is_gcs(uri) else storage.stat(uri)
        if info is None:
            raise DownloadError(f"{source}:{where[uri]}: audio file not found: {uri}")
        return _checksummed(relative[uri], info)

    files = parallel_map(describe, distinct, workers)
    out_entries = [
        {**entry, "audio_filepath": relative[uri]} for entry, uri in zip(entries, uris, strict=True)
    ]
    digest = hashlib.sha1(content_revision(files).encode())
    for entry in out_entries:
        digest.update(manifest.manifest_line(entry).encode("utf-8"))
    computed = digest.hexdigest()
    if revision and revision != computed:
        raise DownloadError(f"--revision {revision} was asked for, but {source} has revision {computed}")
    name = dataset or re.sub(r"\.jsonl?$", "", storage.basename(source))
    return Plan(
        source,
        MANIFEST,
        name,
        config or DEFAULT_CONFIG,
        split,
        computed,
        MANIFEST,
        files,
        entries=out_entries,
    )


# --- copying -----------------------------------------------------------------------------


def parallel_map(fn: Callable[[T], R], items: Sequence[T], workers: int) -> list[R]:
    """``[fn(x) for x in items]`` on ``workers`` threads, in order; the first error stops the rest."""
    if workers <= 1 or len(items) <= 1:
        return [fn(item) for item in items]
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        # each call in a copy of this context: the staging directory of the lock held
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        return [future.result() for future in futures]


class Transfer:
    """Counts files and bytes moved, logs progress lines (files, MB, MB/s, ETA), and keeps the
    rate under ``max_mbps`` (all workers together) when one is given."""

    def __init__(
        self, total_files: int, total_bytes: int, max_mbps: float | None = None, every_s: float = 10.0
    ) -> None:
        self.total_files = total_files
        self.total_bytes = total_bytes
        self.max_rate = max_mbps * MB if max_mbps else None
        self.every_s = every_s
        self.files = 0
        self.bytes = 0
        self.started = time.monotonic()
        self._last = self.started
        self._lock = threading.Lock()

    def add_bytes(self, n: int) -> None:
        with self._lock:
            self.bytes += n
            now = time.monotonic()
            due = self.started + self.bytes / self.max_rate if self.max_rate else now
            line = None
            if now - self._last >= self.every_s:
                self._last = now
                line = self.line()
        if line:
            log.info(line)
        if due > now:
            time.sleep(due - now)

    def file_done(self) -> None:
        with self._lock:
            self.files += 1

    def line(self, final: bool = False) -> str:
        elapsed = time.monotonic() - self.started
        rate = self.bytes / elapsed if elapsed > 0 else 0.0
        percent = f" ({self.bytes / self.total_bytes:.0%})" if self.total_bytes else ""
        parts = [
            f"download: {self.files}/{self.total_files} files",
            f"{self.bytes / MB:.1f}/{self.total_bytes / MB:.1f} MB{percent}",
            f"{rate / MB:.1f} MB/s",
        ]
        if final:
            parts.append(f"done in {format_seconds(elapsed)}")
        elif rate > 0:
            parts.append(f"ETA {format_seconds((self.total_bytes - self.bytes) / rate)}")
        return ", ".join(parts)


@dataclasses.dataclass
class _Copier:
    """Copies one planned file to its place under ``out``; knows the source kind."""

    plan: Plan
    out: str
    transfer: Transfer
    columns: Columns
    token: str | None = None

    def target(self, file: SourceFile) -> str:
        return storage.join(self.out, *file.path.split("/"))

    def staging(self) -> str:
        """Where hub files land first: inside ``out`` when local (so a rename places them, and
        a rerun resumes a partial download), else a directory of this machine's temp space."""
        if not storage.is_gcs(self.out):
            return os.path.join(self.out, STAGING_NAME)
        tag = hashlib.sha1(self.out.encode()).hexdigest()[:12]
        return os.path.join(tempfile.gettempdir(), f"asrflow-download-{tag}")

    def copy(self, file: SourceFile) -> None:
        target = self.target(file)
        storage.delete(target)  # a leftover that failed the check; uploads are create-only
        if self.plan.kind == "hub":
            self._from_hub(file, target)
        elif storage.is_gcs(target) and storage.is_gcs(file.uri):
            self._rewrite(file, target)
        elif storage.is_gcs(target):
            storage.upload_file(file.uri, target)
            self.transfer.add_bytes(file.size)
            self._check_placed(file, target)
        else:
            self._stream(file, target)
        if self.plan.format == PARQUET:
            check_schema(target, self.columns)  # fail on the first file, not after the last
        self.transfer.file_done()

    def _stream(self, file: SourceFile, target: str) -> None:
        digest = new_hash(file.algorithm, file.size)
        size = 0
        with storage.open_read(file.uri) as src, storage.atomic_writer(target) as dst:
            for chunk in iter(lambda: src.read(storage.CHUNK_BYTES), b""):
                dst.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                self.transfer.add_bytes(len(chunk))
            if size != file.size or digest.hexdigest() != file.digest:
                raise DownloadError(
                    f"{file.uri}: read {size} bytes with {file.algorithm} {digest.hexdigest()}, "
                    f"expected {file.size} bytes with {file.digest}; the source changed while copying?"
                )

    def _rewrite(self, file: SourceFile, target: str) -> None:
        client = storage.gcs_client()
        src_bucket, src_name = storage.split_gcs(file.uri)
        dst_bucket, dst_name = storage.split_gcs(target)
        source_blob = client.bucket(src_bucket).blob(src_name)
        blob = client.bucket(dst_bucket).blob(dst_name)
        token, _, _ = blob.rewrite(source_blob, if_generation_match=0)
        while token is not None:
            token, _, _ = blob.rewrite(source_blob, token=token, if_generation_match=0)
        self.transfer.add_bytes(file.size)
        self._check_placed(file, target)

    def _from_hub(self, file: SourceFile, target: str) -> None:
        from huggingface_hub import hf_hub_download

        assert self.plan.repo_id is not None
        staged = hf_hub_download(
            self.plan.repo_id,
            file.path,
            repo_type="dataset",
            revision=self.plan.revision,
            local_dir=self.staging(),
            token=self.token,
            endpoint=hub_endpoint(),
        )
        if os.path.getsize(staged) != file.size or hash_uri(staged, file.algorithm, file.size) != file.digest:
            os.unlink(staged)
            raise DownloadError(
                f"{self.plan.repo_id}/{file.path}: the downloaded bytes fail their {file.algorithm} check"
            )
        self.transfer.add_bytes(file.size)
        if storage.is_gcs(target):
            storage.upload_file(staged, target)
            os.unlink(staged)
            record_checksum(target, file)
        else:
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.replace(staged, target)

    def _check_placed(self, file: SourceFile, target: str) -> None:
        if not is_complete_copy(target, file):
            storage.delete(target)
            raise DownloadError(f"{target}: the copy of {file.uri} fails its size or {file.algorithm} check")


def remove_stale_temporaries(out: str) -> int:
    """Delete temporary files a killed run left in a local ``out`` (not the hub staging area,
    which holds resumable partial downloads, nor lock files). Returns how many went. Only the
    holder of ``out``'s lock calls it: another run's temporaries are never touched."""
    if storage.is_gcs(out) or not os.path.isdir(out):
        return 0
    removed = 0
    for directory, subdirs, names in os.walk(out):
        subdirs[:] = [d for d in subdirs if d != STAGING_NAME]
        for name in names:
            if name.startswith(storage.TEMP_PREFIX) and not storage.is_lock_name(name):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))
                    removed += 1
    return removed


# --- what the files hold -----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FileStats:
    rows: int
    duration: float  # in the duration column's unit, or seconds when measured from audio
    unreadable: int = 0


def _duration_scale(column: str) -> float:
    return 0.001 if column.endswith("_ms") else 1.0


def choose_duration_column(names: Sequence[str], columns: Columns, uri: str) -> str | None:
    """The duration column to use, or None to measure durations from the audio."""
    if columns.duration:
        if columns.duration not in names:
            raise DownloadError(_missing_column(uri, "duration", columns.duration, names))
        return columns.duration
    return next((name for name in DURATION_CANDIDATES if name in names), None)


def _missing_column(uri: str, role: str, name: str, names: Sequence[str]) -> str:
    return (
        f"{uri}: no column {name!r} (the {role} column; set it with --{role}-column); "
        f"the file has columns {', '.join(names)}"
    )


def _audio_seconds(value: Any) -> float | None:
    import soundfile

    data = value.get("bytes") if isinstance(value, dict) else value
    if not isinstance(data, bytes) or not data:
        return None
    try:
        return float(soundfile.info(io.BytesIO(data)).duration)
    except (RuntimeError, soundfile.LibsndfileError):
        return None


def check_schema(uri: str, columns: Columns) -> list[str]:
    """The column names of a parquet file (its footer only); a missing column is an error
    naming the file, the column and the columns there are."""
    import pyarrow.parquet as pq

    with storage.open_read(uri) as stream:
        names = list(pq.ParquetFile(stream).schema_arrow.names)
    for role, name in (("id", columns.id), ("audio", columns.audio), ("text", columns.text)):
        if name not in names:
            raise DownloadError(_missing_column(uri, role, name, names))
    if columns.duration is not None and columns.duration not in names:
        raise DownloadError(_missing_column(uri, "duration", columns.duration, names))
    return names


def parquet_stats(uri: str, columns: Columns, duration_column: str | None) -> FileStats:
    """Rows from the parquet footer; durations from the duration column alone, or else from
    the audio headers, a few rows at a time. A missing column is an error naming the file."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    with storage.open_read(uri) as stream:
        parquet = pq.ParquetFile(stream, buffer_size=1 << 20)
        names = parquet.schema_arrow.names
        for role, name in (("id", columns.id), ("audio", columns.audio), ("text", columns.text)):
            if name not in names:
                raise DownloadError(_missing_column(uri, role, name, names))
        if duration_column is not None and duration_column not in names:
            raise DownloadError(_missing_column(uri, "duration", duration_column, names))
        rows = parquet.metadata.num_rows
        if duration_column is not None:
            total = 0
            for batch in parquet.iter_batches(columns=[duration_column], batch_size=65536):
                total += pc.sum(batch.column(0)).as_py() or 0
            return FileStats(rows, total)
        seconds = 0.0
        unreadable = 0
        for batch in parquet.iter_batches(columns=[columns.audio], batch_size=16):
            for value in batch.column(0).to_pylist():
                measured = _audio_seconds(value)
                if measured is None:
                    unreadable += 1
                else:
                    seconds += measured
        return FileStats(rows, seconds, unreadable)


# --- the step ----------------------------------------------------------------------------


def make_plan(
    source: str,
    config: str | None = None,
    split: str = DEFAULT_SPLIT,
    revision: str | None = None,
    pattern: str | None = None,
    dataset: str | None = None,
    workers: int = 8,
    token: str | None = None,
) -> Plan:
    """List and check everything a download will copy, without copying anything.

    The hub token defaults to ``HF_TOKEN``; it is never logged.
    """
    if token is None:
        token = os.environ.get("HF_TOKEN") or None
    kind = source_kind(source)
    if kind != "hub" and not storage.is_gcs(source):
        source = os.path.abspath(source)
    if kind == "hub":
        return plan_hub(source, config, split, revision, pattern, dataset, token)
    if kind == MANIFEST:
        return plan_manifest(source, split, revision, dataset, config, workers)
    return plan_tree(source, config, split, revision, pattern, dataset, workers)


def resolve_revision(
    source: str,
    config: str | None = None,
    split: str = DEFAULT_SPLIT,
    revision: str | None = None,
    pattern: str | None = None,
    dataset: str | None = None,
    workers: int = 8,
    token: str | None = None,
) -> dict[str, Any]:
    """The revision a download of ``source`` would have now, without copying anything.

    A hub branch or tag becomes its commit SHA; a local or gs:// source gets the hash of its
    file listing. The pipeline runs this uncached and passes the result to a cached
    download, so unchanged data reuses every data step of an earlier run and new data
    upstream makes new cache keys.

    Returns:
        The card: source, dataset, config, split, revision, files and bytes.
    """
    plan = make_plan(source, config, split, revision, pattern, dataset, workers, token)
    log.info(
        "resolve-revision: %s (config %s, split %s) is at %s",
        plan.source,
        plan.config,
        plan.split,
        plan.revision,
    )
    return {
        "step": "resolve-revision",
        "source": plan.source,
        "dataset": plan.dataset,
        "config": plan.config,
        "split": plan.split,
        "revision": plan.revision,
        "num_files": len(plan.files),
        "bytes": sum(f.size for f in plan.files),
    }


def download(
    source: str,
    out: str | None = None,
    *,
    data_root: str | None = None,
    config: str | None = None,
    split: str = DEFAULT_SPLIT,
    revision: str | None = None,
    workers: int = 8,
    columns: Columns = Columns(),
    pattern: str | None = None,
    dataset: str | None = None,
    max_mbps: float | None = None,
    token: str | None = None,
) -> dict[str, Any]:
    """Copy a dataset into ``out`` (or its key below ``data_root``) and write its card.

    Args:
        source: ``hf://datasets/OWNER/NAME``, a local directory or ``gs://`` prefix with the
            hub's parquet layout, or a NeMo manifest.
        out: the output directory (local or gs://).
        data_root: used when ``out`` is None: ``out`` becomes :func:`dataset_key` below it.
        config: the dataset config (e.g. ``clean``); None: the only or default one.
        split: the split (``train``, ``validation``, ``test``).
        revision: hub branch, tag or commit; for other sources the expected content hash.
        workers: files copied at once.
        columns: the parquet column names.
        pattern: a glob of data files relative to the source root, instead of the card's.
        dataset: the dataset's name in the card and key (default: from the source).
        max_mbps: cap on the transfer rate in MB/s, all workers together.
        token: hub token; default ``HF_TOKEN``. Never logged.

    Returns:
        The card (also written as ``card.json`` in ``out``, before ``_SUCCESS``).
    """
    if workers < 1:
        raise DownloadError(f"--workers must be at least 1, not {workers}")
    plan = make_plan(source, config, split, revision, pattern, dataset, workers, token)
    if out is None:
        if data_root is None:
            raise DownloadError("give --out DIR or --data-root ROOT")
        out = storage.join(data_root, dataset_key(plan.dataset, plan.config, plan.split, plan.revision))
    if not storage.is_gcs(out):
        out = os.path.abspath(out)
    total_bytes = sum(f.size for f in plan.files)
    log.info(
        "download: %s (%s, config %s, split %s, revision %s): %d files, %.1f MB -> %s",
        plan.source, plan.dataset, plan.config, plan.split, plan.revision,
        len(plan.files), total_bytes / MB, out,
    )  # fmt: skip
    if plan.format == PARQUET and plan.kind != "hub":
        check_schema(plan.files[0].uri, columns)
    try:
        with storage.locked(storage.lock_uri(out), STEP):
            storage.claim_output(out, STEP)
            return _download_locked(plan, out, columns, workers, max_mbps, token)
    except storage.OutputError as err:
        raise DownloadError(f"{STEP}: {err}") from None


def _download_locked(
    plan: Plan, out: str, columns: Columns, workers: int, max_mbps: float | None, token: str | None
) -> dict[str, Any]:
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("download: removed %d temporary file(s) left by an earlier run", stale)
    copier = _Copier(plan, out, Transfer(0, 0, max_mbps), columns, token)
    complete = parallel_map(lambda f: is_complete_copy(copier.target(f), f), plan.files, workers)
    todo = [f for f, done in zip(plan.files, complete, strict=True) if not done]
    log.info(
        "download: %d of %d files already complete and verified", len(plan.files) - len(todo), len(plan.files)
    )
    if todo:
        storage.delete(storage.join(out, storage.SUCCESS_MARKER))
        copier.transfer = Transfer(len(todo), sum(f.size for f in todo), max_mbps)
        if plan.kind == "hub":
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        parallel_map(copier.copy, todo, workers)
        log.info(copier.transfer.line(final=True))
    if plan.kind == "hub":
        shutil.rmtree(copier.staging(), ignore_errors=True)
    if plan.entries is not None:
        manifest.write_manifest(storage.join(out, MANIFEST_NAME), plan.entries)
    card = _card(plan, out, columns, workers)
    cards.write_card(out, card, echo=False)
    storage.mark_complete(out)
    return card


def _card(plan: Plan, out: str, columns: Columns, workers: int) -> dict[str, Any]:
    card: dict[str, Any] = {
        "step": "download",
        "source": plan.source,
        "dataset": plan.dataset,
        "config": plan.config,
        "split": plan.split,
        "revision": plan.revision,
        "format": plan.format,
        "out": out,
        "bytes": sum(f.size for f in plan.files),
    }
    if plan.entries is not None:
        seconds = sum(float(entry["duration"]) for entry in plan.entries)
        card.update(
            files=[MANIFEST_NAME],
            num_files=1,
            audio_files=len(plan.files),
            rows=len(plan.entries),
            hours=round(seconds / 3600, 6),
            columns=None,
            duration_unit="s",
        )
        return card
    first = storage.join(out, *plan.files[0].path.split("/"))
    duration_column = choose_duration_column(check_schema(first, columns), columns, first)
    stats = parallel_map(
        lambda f: parquet_stats(storage.join(out, *f.path.split("/")), columns, duration_column),
        plan.files,
        workers,
    )
    scale = _duration_scale(duration_column) if duration_column else 1.0
    seconds = sum(s.duration for s in stats) * scale
    card.update(
        files=[f.path for f in plan.files],
        num_files=len(plan.files),
        rows=sum(s.rows for s in stats),
        hours=round(seconds / 3600, 6),
        columns={"id": columns.id, "audio": columns.audio, "text": columns.text, "duration": duration_column},
        duration_unit=("ms" if scale == 0.001 else "s") if duration_column else None,
    )
    if duration_column is None:
        card["audio_unreadable"] = sum(s.unreadable for s in stats)
    return card

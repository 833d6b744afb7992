"""Planning a download: what a source is, which files it copies, and the revision it gets.

Three planners, one per kind of source: a hub dataset (:func:`plan_hub`), a local or gs://
copy of the hub's parquet layout (:func:`plan_tree`), and a NeMo manifest with its audio
files (:func:`plan_manifest`). Nothing is copied while planning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from components import manifest, storage
from components.download.card import MANIFEST, PARQUET
from components.download.data_files import (
    DEFAULT_CONFIG,
    README_NAME,
    choose_config,
    readme_configs,
    select_files,
)
from components.download.errors import DownloadError
from components.download.files import (
    GCS,
    HUB,
    LOCAL,
    DownloadRequest,
    Plan,
    SourceFile,
    content_revision,
)
from components.download.hub import HF_DATASETS, parse_hub_source, resolve_hub
from components.download.parallel import parallel_map
from components.download.transfer import MB
from components.layout import AUDIO_DIR

log = logging.getLogger("asrflow.download")


def source_kind(source: str) -> str:
    """``hub``, ``gcs``, ``local`` or ``manifest``; an unknown scheme is an error."""
    if source.startswith("hf://"):
        if not source.startswith(HF_DATASETS):
            raise DownloadError(f"unsupported hub source {source!r}: use hf://datasets/OWNER/NAME")
        return HUB
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", source)
    if scheme and not storage.is_gcs(source):
        raise DownloadError(
            f"unknown source scheme {scheme.group(1)}:// in {source!r}; expected "
            "hf://datasets/OWNER/NAME, gs://BUCKET/PREFIX, a local directory, or a NeMo manifest "
            "(.json or .jsonl)"
        )
    if source.endswith((".json", ".jsonl")):
        return MANIFEST
    return GCS if storage.is_gcs(source) else LOCAL


def make_plan(request: DownloadRequest | str, **fields: Any) -> Plan:
    """List and check everything a download will copy, without copying anything.

    Args:
        request: what to download; or its source, with the request's other fields as keywords.
        **fields: :class:`~components.download.files.DownloadRequest` fields (``config``,
            ``split``, ``revision``, ...) that ``request`` does not hold.
    """
    request = DownloadRequest.of(request, **fields)
    kind = source_kind(request.source)
    if kind == HUB:
        return plan_hub(request)
    if not storage.is_gcs(request.source):
        request = dataclasses.replace(request, source=os.path.abspath(request.source))
    if kind == MANIFEST:
        return plan_manifest(request)
    return plan_tree(request)


def _choose_files(
    request: DownloadRequest, paths: list[str], configs: list[dict[str, Any]] | None
) -> tuple[str, list[str]]:
    """The config (the request's, else the only or default one) and its split's data files."""
    config = request.config or choose_config(None if request.pattern else configs, paths)
    return config, select_files(paths, config, request.split, configs, request.pattern)


def plan_hub(request: DownloadRequest) -> Plan:
    """Plan a download from the hub: resolve the revision to a commit, choose the files."""
    source, revision = request.source, request.revision
    repo_id, source_revision = parse_hub_source(source)
    if revision and source_revision and revision != source_revision:
        raise DownloadError(f"two revisions given: {source_revision} in SOURCE and --revision {revision}")
    sha, configs, files = resolve_hub(repo_id, revision or source_revision, request.hub_token)
    config, chosen = _choose_files(request, sorted(files), configs)
    name = request.dataset or repo_id
    return Plan(
        source, HUB, name, config, request.split, sha, PARQUET, [files[p] for p in chosen], repo_id=repo_id
    )


def _relative_listing(root: str) -> dict[str, storage.FileInfo]:
    prefix = root.rstrip("/") + "/" if storage.is_gcs(root) else str(Path(root)) + os.sep
    return {info.uri[len(prefix) :].replace(os.sep, "/"): info for info in storage.list_files(root)}


def _check_revision(revision: str | None, source: str, computed: str) -> None:
    if revision and revision != computed:
        raise DownloadError(f"--revision {revision} was asked for, but {source} has revision {computed}")


def plan_tree(request: DownloadRequest) -> Plan:
    """Plan a copy of a local directory or gs:// prefix that has the hub's parquet layout."""
    source = request.source
    kind = source_kind(source)
    if kind == LOCAL and not Path(source).is_dir():
        raise DownloadError(f"no such directory: {source}")
    listing = _relative_listing(source)
    if not listing:
        raise DownloadError(f"{source} is empty")
    readme = listing.get(README_NAME)
    configs = readme_configs(storage.read_text(readme.uri)) if readme is not None else None
    config, chosen = _choose_files(request, sorted(listing), configs)
    if not storage.is_gcs(source):
        megabytes = sum(listing[p].size for p in chosen) / MB
        log.info("download: checksumming %d local files (%.1f MB)", len(chosen), megabytes)
    files = parallel_map(lambda p: SourceFile.from_listing(p, listing[p]), chosen, request.workers)
    computed = content_revision(files)
    _check_revision(request.revision, source, computed)
    name = request.dataset or storage.basename(source.rstrip("/")) or "dataset"
    return Plan(source, kind, name, config, request.split, computed, PARQUET, files)


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


def plan_manifest(request: DownloadRequest) -> Plan:
    """Plan a copy of a NeMo manifest and its audio files (``audio/…`` below ``out``)."""
    source = request.source
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
        return SourceFile.from_listing(relative[uri], info)

    files = parallel_map(describe, distinct, request.workers)
    out_entries = [
        {**entry, "audio_filepath": relative[uri]} for entry, uri in zip(entries, uris, strict=True)
    ]
    digest = hashlib.sha1(content_revision(files).encode())
    for entry in out_entries:
        digest.update(manifest.manifest_line(entry).encode("utf-8"))
    computed = digest.hexdigest()
    _check_revision(request.revision, source, computed)
    name = request.dataset or re.sub(r"\.jsonl?$", "", storage.basename(source))
    return Plan(
        source,
        MANIFEST,
        name,
        request.config or DEFAULT_CONFIG,
        request.split,
        computed,
        MANIFEST,
        files,
        entries=out_entries,
    )

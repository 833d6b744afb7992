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

The parts: :mod:`~components.download.plan` (what to copy), :mod:`~components.download.copier`
(copying), :mod:`~components.download.parquet_stats` (the card's figures) and
:mod:`~components.download.card` (the cards).
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from components import manifest, outputs, storage
from components.columns import DEFAULT_COLUMNS, Columns
from components.download.card import PARQUET, DownloadCard, ResolveRevisionCard
from components.download.checksums import is_complete_copy
from components.download.copier import Copier, remove_stale_temporaries, target_uri
from components.download.errors import DownloadError
from components.download.files import HUB, DownloadRequest, Plan
from components.download.parallel import parallel_map
from components.download.parquet_stats import check_schema, parquet_stats
from components.download.plan import make_plan
from components.download.transfer import MB, Transfer
from components.layout import DATASETS_DIR, DOWNLOAD_MANIFEST_NAME, RAW_DIR

log = logging.getLogger("asrflow.download")

STEP = DownloadCard.STEP


def dataset_key(dataset: str, config: str, split: str, revision: str) -> str:
    """The key of a download below ``data_root``: ``datasets/<dataset>/<config>/<split>/<revision>/raw``.

    A hub repo id's '/' becomes '--' (as in the hub's own cache), so that the dataset is one
    path segment.
    """
    parts = [dataset.replace("/", "--"), config, split, revision]
    for part in parts:
        if not part or part in (".", "..") or "/" in part or part.startswith(storage.TEMP_PREFIX):
            raise DownloadError(f"cannot use {part!r} in a data_root key ({'/'.join(parts)})")
    return "/".join([DATASETS_DIR, *parts, RAW_DIR])


def resolve_revision(request: DownloadRequest | str, **fields: Any) -> ResolveRevisionCard:
    """The revision a download of ``request`` would have now, without copying anything.

    A hub branch or tag becomes its commit SHA; a local or gs:// source gets the hash of its
    file listing. The pipeline runs this uncached and passes the result to a cached
    download, so unchanged data reuses every data step of an earlier run and new data
    upstream makes new cache keys.

    Args:
        request: what a download would copy; or its source, with the request's other fields
            as keywords.
        **fields: :class:`~components.download.files.DownloadRequest` fields (``config``,
            ``split``, ``revision``, ...) that ``request`` does not hold.

    Returns:
        The card: source, dataset, config, split, revision, files and bytes.
    """
    plan = make_plan(request, **fields)
    log.info(
        "resolve-revision: %s (config %s, split %s) is at %s",
        plan.source,
        plan.config,
        plan.split,
        plan.revision,
    )
    return ResolveRevisionCard(
        source=plan.source,
        dataset=plan.dataset,
        config=plan.config,
        split=plan.split,
        revision=plan.revision,
        num_files=len(plan.files),
        bytes=plan.bytes,
    )


def download(
    request: DownloadRequest | str,
    out: str | None = None,
    *,
    data_root: str | None = None,
    columns: Columns = DEFAULT_COLUMNS,
    max_mbps: float | None = None,
    **fields: Any,
) -> DownloadCard:
    """Copy a dataset into ``out`` (or its key below ``data_root``) and write its card.

    Args:
        request: what to download (source, config, split, revision, pattern, dataset, workers,
            token); or its source, with the request's other fields as keywords.
        out: the output directory (local or gs://).
        data_root: used when ``out`` is None: ``out`` becomes :func:`dataset_key` below it.
        columns: the parquet column names.
        max_mbps: cap on the transfer rate in MB/s, all workers together.
        **fields: :class:`~components.download.files.DownloadRequest` fields (``config``,
            ``split``, ``revision``, ``workers``, ...) that ``request`` does not hold.

    Returns:
        The card (also written as ``card.json`` in ``out``, before ``_SUCCESS``).
    """
    request = DownloadRequest.of(request, **fields)
    plan = make_plan(request)
    if out is None:
        if data_root is None:
            raise DownloadError("give --out DIR or --data-root ROOT")
        out = storage.join(data_root, dataset_key(plan.dataset, plan.config, plan.split, plan.revision))
    if not storage.is_gcs(out):
        out = os.path.abspath(out)
    log.info(
        "download: %s (%s, config %s, split %s, revision %s): %d files, %.1f MB -> %s",
        plan.source, plan.dataset, plan.config, plan.split, plan.revision,
        len(plan.files), plan.bytes / MB, out,
    )  # fmt: skip
    if plan.format == PARQUET and plan.kind != HUB:
        check_schema(plan.files[0].uri, columns)
    try:
        with outputs.locked(outputs.lock_uri(out), STEP):
            outputs.claim_output(out, STEP)
            return _download_locked(plan, out, columns, request, max_mbps)
    except outputs.OutputError as err:
        raise DownloadError(f"{STEP}: {err}") from None


def _download_locked(
    plan: Plan, out: str, columns: Columns, request: DownloadRequest, max_mbps: float | None
) -> DownloadCard:
    workers = request.workers
    stale = remove_stale_temporaries(out)
    if stale:
        log.info("download: removed %d temporary file(s) left by an earlier run", stale)
    copier = Copier(plan, out, Transfer(0, 0, max_mbps), columns, request.hub_token)
    complete = parallel_map(lambda f: is_complete_copy(target_uri(out, f), f), plan.files, workers)
    todo = [f for f, done in zip(plan.files, complete, strict=True) if not done]
    log.info(
        "download: %d of %d files already complete and verified", len(plan.files) - len(todo), len(plan.files)
    )
    if todo:
        storage.delete(storage.join(out, storage.SUCCESS_MARKER))
        copier.transfer = Transfer(len(todo), sum(f.size for f in todo), max_mbps)
        if plan.kind == HUB:
            from huggingface_hub.utils import disable_progress_bars

            disable_progress_bars()
        parallel_map(copier.copy, todo, workers)
        log.info(copier.transfer.line(final=True))
    if plan.kind == HUB:
        shutil.rmtree(copier.staging(), ignore_errors=True)
    if plan.entries is not None:
        manifest.write_manifest(storage.join(out, DOWNLOAD_MANIFEST_NAME), plan.entries)
        card = _manifest_card(plan, out)
    else:
        card = _parquet_card(plan, out, columns, workers)
    card.write(echo=False)
    storage.mark_complete(out)
    return card


def _provenance(plan: Plan, out: str) -> dict[str, Any]:
    """The card's fields that come from the plan alone."""
    return {
        "out_dir": out,
        "source": plan.source,
        "dataset": plan.dataset,
        "config": plan.config,
        "split": plan.split,
        "revision": plan.revision,
        "format": plan.format,
        "bytes": plan.bytes,
    }


def _manifest_card(plan: Plan, out: str) -> DownloadCard:
    """The card of a manifest download: one manifest, its audio files, the hours it declares."""
    assert plan.entries is not None
    seconds = sum(float(entry["duration"]) for entry in plan.entries)
    return DownloadCard(
        **_provenance(plan, out),
        files=[DOWNLOAD_MANIFEST_NAME],
        num_files=1,
        audio_files=len(plan.files),
        rows=len(plan.entries),
        hours=round(seconds / 3600, 6),
        columns=None,
        duration_unit="s",
    )


def _parquet_card(plan: Plan, out: str, columns: Columns, workers: int) -> DownloadCard:
    """The card of a parquet download: rows and hours read from the copied files."""
    first = target_uri(out, plan.files[0])
    resolved = columns.resolve(check_schema(first, columns))
    stats = parallel_map(lambda f: parquet_stats(target_uri(out, f), resolved), plan.files, workers)
    seconds = sum(s.duration for s in stats) * resolved.duration_scale()
    return DownloadCard(
        **_provenance(plan, out),
        files=[f.path for f in plan.files],
        num_files=len(plan.files),
        rows=sum(s.rows for s in stats),
        hours=round(seconds / 3600, 6),
        columns=resolved.mapping(),
        duration_unit=resolved.unit(),
        audio_unreadable=None if resolved.duration else sum(s.unreadable for s in stats),
    )

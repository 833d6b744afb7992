"""write-shards: validate every utterance and write NeMo's tarred dataset layout, streaming.

Output (``out_dir``), as NeMo's ``convert_to_tarred_audio_dataset.py`` lays it out::

    audio_<i>.tar                          utterances, member names ``<id>.<ext>``
    sharded_manifests/manifest_<i>.json    the manifest lines of shard i (with ``shard_id``)
    tarred_audio_manifest.json             all shards' lines, in shard order
    metadata.yaml                          NeMo's tarred-dataset metadata + counts and filters
    rejects.jsonl  card.json  _SUCCESS     what was refused and why; the card; done marker

How the work is cut: parquet input files are split into G groups of about equal bytes
(:func:`components.sources.split_groups`); the items of manifests are dealt to G groups like
cards (:func:`components.sources.deal_manifests`: group g reads items g, g+G, ...), so one
big manifest is written by G processes too. Group g owns the contiguous shard ids
``[g*N//G, (g+1)*N//G)`` and writes them completely, so groups run anywhere (a process pool
here, one KFP task each on a cluster) and the merge only concatenates small manifests. Within
a group each item goes to shard ``first + hash(seed, id) % count``, reading several files at
once, so each shard mixes utterances from all of its group's files. Member order is the
(deterministic) reading order and tar headers are fixed (mtime 0, uid/gid 0, mode 0644), so
the same input, seed and G give byte-identical shards, whatever ``--workers`` is.

Every shard and manifest is written to a temporary name and renamed when complete (on GCS:
uploaded, checksummed, when complete); a group writes its marker ``_groups/group_<g>_of_<G>.json`` last,
the merge writes ``_SUCCESS`` last. A rerun skips finished groups and redoes the others,
which produces the same bytes as an uninterrupted run.

The output directory is guarded (:mod:`components.storage`): write-shards writes only into
an empty directory or its own earlier run (``_ASRFLOW``), the run and the merge hold the
directory's lock and each group holds its own, so a second writer fails at once naming the
first, and only the lock's holder removes temporary files. Pool workers die with the run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import resource
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Mapping
from typing import IO, Any

from components import audio as checks
from components import cards, storage
from components.manifest import Rejects, RejectThresholdExceeded, manifest_line
from components.progress import Progress, format_seconds, setup_logging
from components.sources import (
    MANIFEST,
    Bad,
    Part,
    Source,
    SourceError,
    count_rows,
    deal_manifests,
    iter_items,
    member_stem,
    open_source,
)
from components.sources import split_groups as split_files

log = logging.getLogger("asrflow.write_shards")

STEP = "write-shards"
LAYOUT_VERSION = 2
"""Bump when the same input and settings would give other bytes (2: injective member names,
manifests dealt to groups)."""
FILES_PER_GROUP = 8
MANIFEST_BYTES_PER_GROUP = 256 * 1024
"""Manifest bytes per group by default (about 1,000 lines, one to three hours of speech)."""
MAX_DEFAULT_GROUPS = 64
WRITEBACK_BYTES = 8 * 1024 * 1024
"""A shard asks the kernel to start writing itself to disk every this many bytes."""
INTERLEAVE = 4
"""Input files a group reads at once (one item from each in turn); memory holds about one
parquet row group per open file."""
GROUPS_DIR = "_groups"
MANIFEST_NAME = "tarred_audio_manifest.json"
SHARDED_DIR = "sharded_manifests"
METADATA_NAME = "metadata.yaml"
REJECTS_NAME = "rejects.jsonl"
DELAY_ENV = "ASRFLOW_WRITE_SHARDS_ITEM_DELAY"
"""Seconds to sleep after each item: lets the kill-and-rerun test stop a run mid-way."""


class ShardError(RuntimeError):
    """write-shards cannot go on (settings clash with an earlier run, missing groups, no data)."""


@dataclasses.dataclass(frozen=True)
class Group:
    """One independent piece of work: its parts of the input files and the shard ids they fill."""

    index: int
    count: int
    files: tuple[Part, ...]
    first_shard: int
    num_shards: int

    @property
    def shard_ids(self) -> range:
        return range(self.first_shard, self.first_shard + self.num_shards)

    @property
    def name(self) -> str:
        return f"group_{self.index:05d}_of_{self.count:05d}"


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything that decides the output bytes, and the groups it is cut into."""

    source: Source
    num_shards: int
    seed: int
    rules: checks.Rules
    groups: tuple[Group, ...]

    @property
    def settings_id(self) -> str:
        """A digest of the input files and every setting that changes the output."""
        settings = {
            "layout": LAYOUT_VERSION,
            "input": self.source.fingerprint(),
            "num_shards": self.num_shards,
            "seed": self.seed,
            "groups": len(self.groups),
            "rules": self.rules.as_dict(),
            "interleave": INTERLEAVE,
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def default_groups(source: Source) -> int:
    """Parquet: one group per FILES_PER_GROUP files (parallelism without giving up mixing).
    Manifests: one group per MANIFEST_BYTES_PER_GROUP of manifest, at most MAX_DEFAULT_GROUPS
    (every group samples the whole manifest, so more groups cost no mixing). Never the number
    of workers: the output depends on the groups."""
    if source.format == MANIFEST:
        size = sum(info.size for info in source.files)
        return max(1, min(MAX_DEFAULT_GROUPS, math.ceil(size / MANIFEST_BYTES_PER_GROUP)))
    return max(1, math.ceil(len(source.files) / FILES_PER_GROUP))


def group_limit(source: Source) -> int | None:
    """The most groups an input can be cut into: one per parquet file; manifests: no limit."""
    return None if source.format == MANIFEST else len(source.files)


def make_plan(
    source: Source, num_shards: int, seed: int, rules: checks.Rules, groups: int | None = None
) -> Plan:
    """Cut ``source`` into groups (at most one per parquet file, one per shard) with their
    shard ranges."""
    if num_shards < 1:
        raise ValueError(f"--num-shards must be at least 1, got {num_shards}")
    wanted = groups if groups is not None else default_groups(source)
    if wanted < 1:
        raise ValueError(f"--groups must be at least 1, got {wanted}")
    count = min(wanted, num_shards, group_limit(source) or wanted)
    if source.format == MANIFEST:
        cut = deal_manifests(source.files, count)
    else:
        cut = [[Part(info) for info in files] for files in split_files(source.files, count)]
    made = []
    for index, parts in enumerate(cut):
        first = index * num_shards // count
        end = (index + 1) * num_shards // count
        made.append(Group(index, count, tuple(parts), first, end - first))
    return Plan(source, num_shards, seed, rules, tuple(made))


def shard_for(seed: int, stem: str, group: Group) -> tuple[int, int]:
    """(shard id, 64-bit key) for an item: a seeded hash picks one of the group's shards."""
    digest = hashlib.blake2b(f"{seed}\0{stem}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    key = int.from_bytes(digest, "big")
    return group.first_shard + key % group.num_shards, key


# --- writing one group ------------------------------------------------------------------


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """The fixed header fields every member gets: only name and size vary."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _header_template() -> bytes:
    header = bytearray(member_info("x", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    header[0:100] = bytes(100)
    return bytes(header)


_HEADER_TEMPLATE = _header_template()
_USTAR_MAX_SIZE = 8**11 - 1


def member_header(name: str, size: int) -> bytes:
    """The tar header ``TarInfo.tobuf(PAX_FORMAT)`` writes for :func:`member_info`.

    Names of up to 100 ASCII characters (all of People's Speech's) fit one plain ustar
    block: tarfile's template with the name, the size and the checksum filled in, which
    costs a tenth of building it field by field. Longer names get tarfile's PAX header.
    """
    encoded = name.encode("ascii", "surrogateescape") if name.isascii() else b""
    if not encoded or len(encoded) > 100 or size > _USTAR_MAX_SIZE:
        return member_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(_HEADER_TEMPLATE)
    header[0 : len(encoded)] = encoded
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class TarShard:
    """Appends members to a tar stream with fixed headers, keeping nothing per member.

    The framing is tarfile's own (a header as ``TarInfo.tobuf`` makes it, data padded to
    512 bytes, two zero blocks and padding to a 10 KiB record at the end), without tarfile's
    list of members, which would grow with the shard. Members collect in a buffer of
    ``buffer_bytes`` so that a shard of small utterances costs few system calls; every
    WRITEBACK_BYTES the kernel is asked to start writing the file out.
    """

    def __init__(self, out: IO[bytes], buffer_bytes: int = 256 * 1024) -> None:
        self.out = out
        self.offset = 0
        self.members = 0
        self.buffer = bytearray()
        self.buffer_bytes = buffer_bytes
        self._written_back = 0

    def add(self, name: str, data: bytes) -> None:
        header = member_header(name, len(data))
        padding = -len(data) % tarfile.BLOCKSIZE
        buffer = self.buffer
        buffer += header
        buffer += data
        if padding:
            buffer += tarfile.NUL * padding
        self.offset += len(header) + len(data) + padding
        self.members += 1
        if len(buffer) >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        self.out.write(self.buffer)
        self.buffer.clear()
        if self.offset - self._written_back >= WRITEBACK_BYTES:
            self._written_back = self.offset
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the kernel to write what it holds of this file to disk now (and then to drop it
        from the page cache), so that the disk works while the next items are checked and the
        fsync before the rename finds little left to write."""
        try:
            self.out.flush()
            os.posix_fadvise(self.out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError, ValueError):
            pass  # not a plain file, or no posix_fadvise here: the fsync does it all

    def close(self) -> None:
        end = self.offset + 2 * tarfile.BLOCKSIZE
        end += -end % tarfile.RECORDSIZE
        self.buffer += tarfile.NUL * (end - self.offset)
        self.offset = end
        self.flush()


def tar_name(shard_id: int) -> str:
    return f"audio_{shard_id}.tar"


def sharded_manifest_name(shard_id: int) -> str:
    return f"{SHARDED_DIR}/manifest_{shard_id}.json"


def group_marker(out_dir: str, group: Group) -> str:
    return storage.join(out_dir, GROUPS_DIR, f"{group.name}.json")


def group_rejects(out_dir: str, group: Group) -> str:
    return storage.join(out_dir, GROUPS_DIR, f"{group.name}.rejects.jsonl")


def group_lock(out_dir: str, group: Group) -> str:
    return storage.lock_uri(out_dir, group.name)


def run_lock(out_dir: str) -> str:
    return storage.lock_uri(out_dir)


@contextlib.contextmanager
def guarded(out_dir: str) -> Iterator[storage.Lock]:
    """Hold ``out_dir``'s lock and make sure it is write-shards' own (or empty)."""
    try:
        with storage.locked(run_lock(out_dir), STEP) as lock:
            storage.claim_output(out_dir, STEP)
            yield lock
    except storage.OutputError as err:
        raise ShardError(f"{STEP}: {err}") from None


def _finished(out_dir: str, settings_id: str) -> dict[str, Any] | None:
    """The card of a dataset write-shards finished in ``out_dir`` with these settings, looked
    up without the lock (a rerun on unchanged data only reads)."""
    if storage.owner_of(out_dir) != STEP:
        return None
    return finished_card(out_dir, settings_id)


def read_group_stats(out_dir: str, group: Group, settings_id: str) -> dict[str, Any] | None:
    """A finished group's stats, None when it has not finished; an error when made otherwise."""
    uri = group_marker(out_dir, group)
    if not storage.exists(uri):
        return None
    stats = json.loads(storage.read_text(uri))
    if stats.get("settings_id") != settings_id:
        raise ShardError(
            f"{uri} was written with other input or settings (settings {stats.get('settings_id')}, "
            f"now {settings_id}); write to a new --out directory or delete the old one"
        )
    return stats


def write_group(plan: Plan, group_index: int, out_dir: str, claim: bool = False) -> dict[str, Any]:
    """Validate and write one group's items into its shards, holding the group's lock; return
    its stats. A group that already finished (its marker exists with the same settings) is
    skipped.

    Args:
        claim: check that ``out_dir`` is empty or write-shards' own first (a fan-out task,
            which does not hold the directory's lock).

    Raises:
        ShardError: another process holds the group's lock (the message names it), or the
            directory is another's.
    """
    group = plan.groups[group_index]
    try:
        with storage.locked(group_lock(out_dir, group), STEP) as lock:
            if claim:
                storage.claim_output(out_dir, STEP)
            return _write_group_locked(plan, group, out_dir, lock)
    except storage.OutputError as err:
        raise ShardError(f"{STEP}: {err}") from None


def _write_group_locked(plan: Plan, group: Group, out_dir: str, lock: storage.Lock) -> dict[str, Any]:
    settings_id = plan.settings_id
    done = read_group_stats(out_dir, group, settings_id)
    if done is not None:
        log.info("%s: %s already written, skipped", STEP, group.name)
        return done
    _remove_stale_temporaries(out_dir, group)
    _ensure_open_files(2 * group.num_shards + 2 * INTERLEAVE + 64)
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    rejects, seen = Rejects(), set()
    shard_items = [0] * group.num_shards
    shard_seconds = [0.0] * group.num_shards
    seconds = 0.0
    label = f"{STEP} group {group.index + 1}/{group.count} utterances"
    progress = Progress(label, count_rows(plan.source, group.files))
    with contextlib.ExitStack() as stack:
        tars, manifests = _open_shards(stack, out_dir, group)
        for count, item in enumerate(iter_items(plan.source, group.files, interleave=INTERLEAVE)):
            if count % 256:
                progress.update()
            else:
                progress.update(hours=round(seconds / 3600, 2), rejected=len(rejects))
            if delay:
                time.sleep(delay)
            if isinstance(item, Bad):
                rejects.add(item.id, item.source, item.reason, item.detail)
                continue
            result = checks.check(item.audio, item.text, item.duration, plan.rules)
            if isinstance(result, checks.Refusal):
                rejects.add(item.id, item.source, result.reason, result.detail)
                continue
            stem = member_stem(item.id)
            shard_id, key = shard_for(plan.seed, stem, group)
            if key in seen:
                rejects.add(item.id, item.source, checks.DUPLICATE_ID, f"an earlier item is named {stem}")
                continue
            seen.add(key)
            member = f"{stem}.{result.extension}"
            slot = shard_id - group.first_shard
            tars[slot].add(member, result.audio)
            entry = {
                "audio_filepath": member,
                "duration": result.duration,
                "text": result.text,
                "shard_id": shard_id,
                "source_id": item.id,
                **item.extra,
            }
            manifests[slot].write(manifest_line(entry).encode("utf-8"))
            shard_items[slot] += 1
            shard_seconds[slot] += result.duration
            seconds += result.duration
        progress.extra.update(hours=round(seconds / 3600, 3), rejected=len(rejects))
        progress.finish()
        # leaving the stack closes every tar and renames shards and manifests into place
    for slot, count in enumerate(shard_items):
        if count == 0:
            shard_id = group.first_shard + slot
            log.warning("%s: shard %d is empty (more shards than its group has items)", STEP, shard_id)
    rejects.write(group_rejects(out_dir, group))
    stats = {
        "settings_id": settings_id,
        "group": group.index,
        "groups": group.count,
        "shards": [group.first_shard, group.first_shard + group.num_shards],
        "files": [part.describe() for part in group.files],
        "utterances": sum(shard_items),
        "seconds": seconds,
        "rejected": len(rejects),
        "rejects_by_reason": rejects.counts(),
        "shard_utterances": shard_items,
        "shard_seconds": shard_seconds,
    }
    lock.check()
    storage.write_text(group_marker(out_dir, group), json.dumps(stats, sort_keys=True) + "\n")
    return stats


def _open_shards(
    stack: contextlib.ExitStack, out_dir: str, group: Group
) -> tuple[list[TarShard], list[IO[bytes]]]:
    storage.makedirs(storage.join(out_dir, SHARDED_DIR))
    tars, manifests = [], []
    for shard_id in group.shard_ids:
        tar_out = stack.enter_context(storage.atomic_writer(storage.join(out_dir, tar_name(shard_id))))
        shard = TarShard(tar_out)
        # the end-of-archive blocks go in before the file is renamed (harmless on failure)
        stack.callback(shard.close)
        tars.append(shard)
        uri = storage.join(out_dir, sharded_manifest_name(shard_id))
        manifests.append(stack.enter_context(storage.atomic_writer(uri)))
    return tars, manifests


def _remove_stale_temporaries(out_dir: str, group: Group) -> None:
    """Delete temporary files a killed run of this group left behind (local disks only; on
    GCS they are in the lock's staging directory). Only the group lock's holder calls it."""
    if storage.is_gcs(out_dir):
        return
    for directory, make_name in ((out_dir, tar_name), (storage.join(out_dir, SHARDED_DIR), _manifest_base)):
        if not os.path.isdir(directory):
            continue
        prefixes = tuple(f"{storage.TEMP_PREFIX}{make_name(i)}." for i in group.shard_ids)
        for name in os.listdir(directory):
            if name.startswith(prefixes):
                storage.delete(os.path.join(directory, name))


def _manifest_base(shard_id: int) -> str:
    return storage.basename(sharded_manifest_name(shard_id))


def _ensure_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise ShardError(
            f"a group keeps {needed} files open but the limit is {hard}; use more --groups "
            f"(fewer shards per group) or raise ulimit -n"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --- merging ------------------------------------------------------------------------------


def finished_card(out_dir: str, settings_id: str) -> dict[str, Any] | None:
    """The card of the dataset already finished in ``out_dir`` with these settings, or None.

    A finished dataset is left as it is: a rerun (a retried or uncached KFP task on unchanged
    data) neither rewrites its files nor drops what later steps added to its metadata.yaml.

    Raises:
        ShardError: ``out_dir`` holds a dataset finished with other input or settings.
    """
    if not storage.is_complete(out_dir):
        return None
    written = storage.read_text(storage.join(out_dir, storage.SUCCESS_MARKER)).strip()
    if written != settings_id:
        raise ShardError(
            f"{out_dir} already holds a finished dataset made with other input or settings "
            f"(settings {written}, now {settings_id}); choose a new --out"
        )
    log.info("%s: %s is complete, nothing to do", STEP, out_dir)
    return cards.read_card(out_dir)


def merge(plan: Plan, out_dir: str, max_reject_fraction: float) -> dict[str, Any]:
    """Join finished groups: the full manifest, rejects, metadata, card, then ``_SUCCESS``.

    Raises:
        ShardError: a group has not finished, or nothing was accepted.
        RejectThresholdExceeded: too many faulty items (duration filters do not count).
    """
    settings_id = plan.settings_id
    finished_before = finished_card(out_dir, settings_id)
    if finished_before is not None:
        return finished_before
    stats = [read_group_stats(out_dir, group, settings_id) for group in plan.groups]
    missing = [group.name for group, s in zip(plan.groups, stats, strict=True) if s is None]
    if missing:
        raise ShardError(f"{STEP}: cannot merge, groups not finished: {', '.join(missing)}")
    finished: list[dict[str, Any]] = [s for s in stats if s is not None]
    _concatenate(
        [storage.join(out_dir, sharded_manifest_name(i)) for i in range(plan.num_shards)],
        storage.join(out_dir, MANIFEST_NAME),
    )
    rejects_uri = storage.join(out_dir, REJECTS_NAME)
    _concatenate([group_rejects(out_dir, group) for group in plan.groups], rejects_uri)
    totals = _totals(finished)
    _check_threshold(totals, max_reject_fraction, storage.join(out_dir, REJECTS_NAME))
    if totals["utterances"] == 0:
        raise ShardError(f"{STEP}: no utterance was accepted; see {storage.join(out_dir, REJECTS_NAME)}")
    storage.write_text(storage.join(out_dir, METADATA_NAME), metadata_yaml(plan, totals))
    card = {
        "step": STEP,
        "input": plan.source.uri,
        "out_dir": out_dir,
        "settings_id": settings_id,
        "num_shards": plan.num_shards,
        "seed": plan.seed,
        "groups": len(plan.groups),
        "filters": plan.rules.as_dict(),
        "max_reject_fraction": max_reject_fraction,
        **totals,
        "manifest": storage.join(out_dir, MANIFEST_NAME),
        "metadata": storage.join(out_dir, METADATA_NAME),
        "rejects": storage.join(out_dir, REJECTS_NAME),
        "tarred_audio_filepaths": storage.join(out_dir, f"audio__OP_0..{plan.num_shards - 1}_CL_.tar"),
        "sharded_manifests": storage.join(
            out_dir, SHARDED_DIR, f"manifest__OP_0..{plan.num_shards - 1}_CL_.json"
        ),
    }
    cards.write_card(out_dir, card, echo=False)
    storage.mark_complete(out_dir, settings_id + "\n")
    return card


def _totals(stats: list[dict[str, Any]]) -> dict[str, Any]:
    by_reason: dict[str, int] = {}
    for group in stats:
        for reason, count in group["rejects_by_reason"].items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    utterances = sum(group["utterances"] for group in stats)
    rejected = sum(by_reason.values())
    filtered = sum(count for reason, count in by_reason.items() if reason in checks.FILTER_REASONS)
    seconds = sum(group["seconds"] for group in stats)
    return {
        "utterances": utterances,
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "rejected": rejected,
        "filtered": filtered,
        "faulty": rejected - filtered,
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "shard_utterances": [n for group in stats for n in group["shard_utterances"]],
    }


def _check_threshold(totals: Mapping[str, Any], max_fraction: float, rejects_uri: str) -> None:
    total = totals["utterances"] + totals["rejected"]
    faulty = totals["faulty"]
    if total and faulty / total > max_fraction:
        reasons = ", ".join(
            f"{reason}: {n}"
            for reason, n in totals["rejects_by_reason"].items()
            if reason not in checks.FILTER_REASONS
        )
        raise RejectThresholdExceeded(
            f"{STEP}: rejected {faulty} of {total} items as faulty ({faulty / total:.1%} > "
            f"--max-reject-fraction {max_fraction:.1%}); by reason: {reasons}; see {rejects_uri}"
        )


def metadata_yaml(plan: Plan, totals: Mapping[str, Any]) -> str:
    """NeMo's ``ASRTarredDatasetMetadata`` fields (no timestamp: the bytes stay the same),
    with what asrflow adds under ``asrflow``; estimate-buckets later fills the bucket fields."""
    import yaml

    rules = plan.rules
    metadata = {
        "version": 0,
        "num_samples_per_shard": totals["utterances"] // plan.num_shards,
        "is_concatenated_manifest": False,
        "dataset_config": {
            "num_shards": plan.num_shards,
            "shuffle": True,
            "max_duration": rules.max_duration,
            "min_duration": rules.min_duration,
            "shuffle_seed": plan.seed,
            "sort_in_shards": False,
            "slice_with_offset": False,
            "shard_manifests": True,
            "keep_files_together": False,
            "force_codec": None,
            "use_lhotse": False,
            "use_bucketing": False,
            "num_buckets": None,
            "bucket_duration_bins": None,
        },
        "history": [],
        "asrflow": {
            "step": STEP,
            "input": plan.source.uri,
            "settings_id": plan.settings_id,
            "seed": plan.seed,
            "num_shards": plan.num_shards,
            "groups": len(plan.groups),
            "filters": rules.as_dict(),
            "utterances": totals["utterances"],
            "hours": totals["hours"],
            "rejected": totals["rejected"],
            "rejects_by_reason": totals["rejects_by_reason"],
            "shard_utterances": totals["shard_utterances"],
        },
    }
    return yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False, width=100)


def _concatenate(parts: list[str], target: str) -> None:
    with storage.atomic_writer(target) as out:
        for part in parts:
            with storage.open_read(part) as stream:
                while chunk := stream.read(storage.CHUNK_BYTES):
                    out.write(chunk)


# --- the step -----------------------------------------------------------------------------


def default_out_dir(input_: str | Mapping[str, Any], plan: Plan) -> str:
    """``…/raw`` (a download's output) -> ``…/tarred/<N>-shards-seed<S>-<settings>``.

    The key changes with the input and every setting, so a rerun finds its own work and a
    run with other settings never mixes with it.
    """
    uri = input_ if isinstance(input_, str) else str(input_.get("out_dir") or input_.get("root") or "")
    if storage.basename(uri) == "card.json":
        uri = storage.parent(uri)
    if storage.basename(uri) != "raw":
        raise ShardError(f"{STEP}: give --out (an output directory) for input {uri or '<card>'}")
    tag = f"{plan.num_shards}-shards-seed{plan.seed}-{plan.settings_id[:8]}"
    return storage.join(storage.parent(uri), "tarred", tag)


def group_specs(input_: str | Mapping[str, Any], max_groups: int, split: str | None = None) -> list[str]:
    """``"I/G"`` for every group of an input cut into at most ``max_groups`` (one per parquet
    file at most; a manifest is dealt to all ``max_groups``)."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    limit = group_limit(open_source(input_, split=split))
    count = min(max_groups, limit or max_groups)
    return [f"{index}/{count}" for index in range(count)]


def _settings(plan: Plan, out_dir: str, groups: int | None, split: str | None) -> dict[str, Any]:
    """What a group task records so that the merge can rebuild the same plan."""
    return {
        "out_dir": out_dir,
        "num_shards": plan.num_shards,
        "seed": plan.seed,
        "groups_requested": groups,
        "split": split,
        "rules": plan.rules.as_dict(),
    }


def merge_groups(
    input_: str | Mapping[str, Any], group_stats: list[dict[str, Any]], max_reject_fraction: float
) -> dict[str, Any]:
    """Merge after a fan-out, with the settings the group tasks recorded in their stats."""
    if not group_stats:
        raise ShardError(f"{STEP}: nothing to merge (no group stats)")
    settings = group_stats[0]["settings"]
    for stats in group_stats[1:]:
        if stats["settings"] != settings:
            raise ShardError(
                f"{STEP}: group {stats['group']} ran with other settings than group "
                f"{group_stats[0]['group']}: {stats['settings']} vs {settings}"
            )
    source = open_source(input_, split=settings["split"])
    rules = checks.Rules(**settings["rules"])
    plan = make_plan(source, settings["num_shards"], settings["seed"], rules, settings["groups_requested"])
    finished = _finished(settings["out_dir"], plan.settings_id)
    if finished is not None:
        return finished
    with guarded(settings["out_dir"]):
        return merge(plan, settings["out_dir"], max_reject_fraction)


def write_shards(
    input_: str | Mapping[str, Any],
    out_dir: str | None,
    num_shards: int,
    seed: int,
    *,
    split: str | None = None,
    rules: checks.Rules | None = None,
    max_reject_fraction: float = 0.01,
    workers: int = 1,
    groups: int | None = None,
    group: int | None = None,
    merge_only: bool = False,
) -> dict[str, Any]:
    """Write a NeMo tarred dataset from INPUT into ``out_dir``; return the card.

    Args:
        input_: a parquet directory, a download card (URI or dict) or a NeMo manifest.
        out_dir: local directory or ``gs://`` prefix for the shards; None: beside a
            download's ``raw`` directory (:func:`default_out_dir`).
        num_shards: how many ``audio_<i>.tar`` files to write.
        seed: decides which shard each utterance goes to.
        split: the split to read when the input directory holds several.
        rules: validation and filters (default: :class:`components.audio.Rules`).
        max_reject_fraction: fail when more than this fraction of items is faulty.
        workers: processes writing groups at the same time (the output does not depend on it).
        groups: how many independent groups to cut the input files into (default: one per
            8 files); the output depends on it, since shards mix files within a group.
        group: write only this group (a KFP fan-out task) and return its stats; no merge.
        merge_only: only merge groups written earlier (the KFP fan-in task).

    Returns:
        The card (or, with ``group``, the group's stats).
    """
    rules = rules or checks.Rules()
    source = open_source(input_, split=split)
    plan = make_plan(source, num_shards, seed, rules, groups)
    settings_id = plan.settings_id
    out_dir = out_dir or default_out_dir(input_, plan)
    if group is not None:
        if not 0 <= group < (groups or len(plan.groups)):
            raise ValueError(f"--group {group} is outside 0..{(groups or len(plan.groups)) - 1}")
        try:
            storage.Lock(run_lock(out_dir), STEP).probe()  # a whole run or a merge is writing
        except storage.OutputError as err:
            raise ShardError(f"{STEP}: {err}") from None
        if group >= len(plan.groups):
            log.info("%s: group %d has no files (input has %d), nothing to do", STEP, group, len(plan.groups))
            stats: dict[str, Any] = {"settings_id": settings_id, "group": group, "utterances": 0}
        else:
            stats = write_group(plan, group, out_dir, claim=True)
        return {**stats, "out_dir": out_dir, "settings": _settings(plan, out_dir, groups, split)}
    finished = _finished(out_dir, settings_id)
    if finished is not None:
        return finished
    with guarded(out_dir):
        finished = finished_card(out_dir, settings_id)
        if finished is not None:
            return finished
        if not merge_only:
            _write_all_groups(plan, out_dir, workers)
        return merge(plan, out_dir, max_reject_fraction)


def _write_all_groups(plan: Plan, out_dir: str, workers: int) -> None:
    started = time.monotonic()
    count = len(plan.groups)
    workers = max(1, min(workers, count))
    log.info(
        "%s: %d files in %d groups -> %d shards, %d worker(s)",
        STEP,
        len(plan.source.files),
        count,
        plan.num_shards,
        workers,
    )
    if workers == 1:
        results = [write_group(plan, index, out_dir) for index in range(count)]
    else:
        context = _pool_context()
        log.debug("%s: workers start by %s", STEP, context.get_start_method())
        pool = concurrent.futures.ProcessPoolExecutor(
            workers,
            context,
            initializer=_init_worker,
            initargs=(os.getpid(), storage.process_start(os.getpid())),
        )
        with pool:
            futures = [pool.submit(write_group, plan, index, out_dir) for index in range(count)]
            results = []
            try:
                for done, future in enumerate(futures, start=1):
                    results.append(future.result())
                    log.info("%s: %d/%d groups written", STEP, done, count)
            except (KeyboardInterrupt, SystemExit):
                # stopped (SIGTERM): the workers release their locks and end now
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
                pool.shutdown(wait=True, cancel_futures=True)
                raise
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)  # groups running finish; no new ones
                raise
    seconds = sum(r["seconds"] for r in results)
    elapsed = time.monotonic() - started
    log.info(
        "%s: %d utterances, %.2f h of audio in %s (%.0fx real time)",
        STEP,
        sum(r["utterances"] for r in results),
        seconds / 3600,
        format_seconds(elapsed),
        seconds / elapsed if elapsed else 0.0,
    )


def _pool_context() -> multiprocessing.context.BaseContext:
    """How pool workers start: forked, when this process has a single thread (the CLI on local
    disks: a fork takes milliseconds, where a fresh interpreter takes a third of a second that
    a small run cannot win back); else from a fork server that has imported this module once,
    so that no thread state (Arrow's pools, a lock's heartbeat) is inherited and no worker pays
    the imports again."""
    if _single_threaded():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(
        [__name__, "components.sources", "components.audio", "pyarrow.parquet", "soundfile"]
    )
    return context


def _single_threaded() -> bool:
    """True when this process has one thread, native ones (Arrow's) counted (Linux only)."""
    try:
        return len(os.listdir("/proc/self/task")) == 1
    except OSError:
        return False


PR_SET_PDEATHSIG = 1


def _init_worker(run_pid: int, run_started: float) -> None:
    """A pool worker's set-up: logging, and dying with the run.

    A forked worker's parent is the run: ``PR_SET_PDEATHSIG`` kills it when the run ends,
    SIGKILL included. A fork server's worker has the fork server as its parent, and the fork
    server lives as long as any worker does (each holds its "alive" pipe), so there each
    worker also watches the run's process itself (a pidfd where Linux has one, else polling)
    and exits the moment it ends; the fork server and the resource tracker then end too.
    """
    setup_logging()
    _set_parent_death_signal()
    threading.Thread(target=_watch_run, args=(run_pid, run_started), name="watch-run", daemon=True).start()


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_run(run_pid: int, run_started: float) -> None:
    """End this process when the run's process ends (a daemon thread of each worker)."""
    import select

    try:
        pidfd: int | None = os.pidfd_open(run_pid)
    except (AttributeError, OSError):
        pidfd = None
    if storage.process_alive(run_pid, run_started):  # after the pidfd: no pid reuse in between
        if pidfd is not None:
            select.select([pidfd], [], [])  # readable once the process has ended
        else:
            while storage.process_alive(run_pid, run_started):
                time.sleep(0.5)
    os._exit(1)


def iter_shard_members(out_dir: str, shard_id: int) -> Iterator[tuple[str, int]]:
    """(member name, size) of one written shard, in order; for checks and tests."""
    with storage.open_read(storage.join(out_dir, tar_name(shard_id))) as stream:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for info in tar:
                yield info.name, info.size


__all__ = [
    "Group",
    "Plan",
    "ShardError",
    "SourceError",
    "RejectThresholdExceeded",
    "make_plan",
    "merge",
    "write_group",
    "write_shards",
]

"""Writing one group: validate its items and write its shards and their manifests.

Every shard and manifest is written to a temporary name and renamed when complete (on GCS:
uploaded, checksummed, when complete); the group writes its marker
``_groups/group_<g>_of_<G>.json`` last, holding the lock of the group, so that a rerun skips
a finished group and redoes the others, which gives the same bytes as an uninterrupted run.
Member order is the (deterministic) reading order, reading several files at once so that
each shard mixes utterances from all of its group's files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import resource
import time
from collections.abc import Sequence
from typing import IO

from components import audio as checks
from components import layout, outputs, storage
from components.items import Bad, Item
from components.manifest import Rejects, manifest_line
from components.member_names import member_stem
from components.progress import Progress
from components.shard.card import GroupCard, ShardsCard
from components.shard.errors import ShardError
from components.shard.plan import INTERLEAVE, Group, Plan, shard_for
from components.shard.tar import TarShard
from components.sources import count_rows, iter_items

log = logging.getLogger("asrflow.write_shards")

STEP = ShardsCard.STEP
GROUPS_DIR = "_groups"
"""Each group's marker and rejects, below the output directory."""
DELAY_ENV = "ASRFLOW_WRITE_SHARDS_ITEM_DELAY"
"""Seconds to sleep after each item: lets the kill-and-rerun test stop a run mid-way."""


def group_marker(out_dir: str, group: Group) -> str:
    return storage.join(out_dir, GROUPS_DIR, f"{group.name}.json")


def group_rejects(out_dir: str, group: Group) -> str:
    return storage.join(out_dir, GROUPS_DIR, f"{group.name}.{layout.REJECTS_NAME}")


def group_lock(out_dir: str, group: Group) -> str:
    return outputs.lock_uri(out_dir, group.name)


def read_group_card(out_dir: str, group: Group, settings_id: str) -> GroupCard | None:
    """A finished group's card, None when it has not finished; an error when made otherwise."""
    uri = group_marker(out_dir, group)
    if not storage.exists(uri):
        return None
    figures = json.loads(storage.read_text(uri))
    if figures.get("settings_id") != settings_id:
        raise ShardError(
            f"{uri} was written with other input or settings (settings {figures.get('settings_id')}, "
            f"now {settings_id}); write to a new --out directory or delete the old one"
        )
    return GroupCard.from_marker(out_dir, figures)


def write_group(plan: Plan, group_index: int, out_dir: str, claim: bool = False) -> GroupCard:
    """Validate and write one group's items into its shards, holding the group's lock; return
    its card. A group that already finished (its marker exists with the same settings) is
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
        with outputs.locked(group_lock(out_dir, group), STEP) as lock:
            if claim:
                outputs.claim_output(out_dir, STEP)
            return _write_group_locked(plan, group, out_dir, lock)
    except outputs.OutputError as err:
        raise ShardError(f"{STEP}: {err}") from None


@dataclasses.dataclass
class _Tally:
    """What a group has written so far: per shard, in all, and what it refused."""

    first_shard: int
    shard_utterances: list[int]
    shard_seconds: list[float]
    seconds: float = 0.0
    rejects: Rejects = dataclasses.field(default_factory=Rejects)
    seen: set[int] = dataclasses.field(default_factory=set)

    @classmethod
    def of(cls, group: Group) -> _Tally:
        return cls(group.first_shard, [0] * group.num_shards, [0.0] * group.num_shards)

    def add(self, slot: int, duration: float) -> None:
        self.shard_utterances[slot] += 1
        self.shard_seconds[slot] += duration
        self.seconds += duration


def _write_group_locked(plan: Plan, group: Group, out_dir: str, lock: outputs.Lock) -> GroupCard:
    settings_id = plan.settings_id
    done = read_group_card(out_dir, group, settings_id)
    if done is not None:
        log.info("%s: %s already written, skipped", STEP, group.name)
        return done
    _remove_stale_temporaries(out_dir, group)
    _ensure_open_files(2 * group.num_shards + 2 * INTERLEAVE + 64)
    tally = _Tally.of(group)
    label = f"{STEP} group {group.index + 1}/{group.count} utterances"
    progress = Progress(label, count_rows(plan.source, group.files))
    with contextlib.ExitStack() as stack:
        tars, manifests = _open_shards(stack, out_dir, group)
        _write_items(plan, group, tars, manifests, tally, progress)
        # leaving the stack closes every tar and renames shards and manifests into place
    for slot, count in enumerate(tally.shard_utterances):
        if count == 0:
            shard_id = group.first_shard + slot
            log.warning("%s: shard %d is empty (more shards than its group has items)", STEP, shard_id)
    tally.rejects.write(group_rejects(out_dir, group))
    card = GroupCard(
        out_dir=out_dir,
        settings_id=settings_id,
        group=group.index,
        groups=group.count,
        shards=[group.first_shard, group.first_shard + group.num_shards],
        files=[part.describe() for part in group.files],
        utterances=sum(tally.shard_utterances),
        seconds=tally.seconds,
        rejected=len(tally.rejects),
        rejects_by_reason=tally.rejects.counts(),
        shard_utterances=tally.shard_utterances,
        shard_seconds=tally.shard_seconds,
    )
    lock.check()
    storage.write_text(group_marker(out_dir, group), card.marker_text())
    return card


def _write_items(
    plan: Plan,
    group: Group,
    tars: Sequence[TarShard],
    manifests: Sequence[IO[bytes]],
    tally: _Tally,
    progress: Progress,
) -> None:
    """Every item of the group, checked, into its shard and that shard's manifest."""
    delay = float(os.environ.get(DELAY_ENV, "0") or 0)
    for count, item in enumerate(iter_items(plan.source, group.files, interleave=INTERLEAVE)):
        if count % 256:
            progress.update()
        else:
            progress.update(hours=round(tally.seconds / 3600, 2), rejected=len(tally.rejects))
        if delay:
            time.sleep(delay)
        _write_item(plan, group, item, tars, manifests, tally)
    progress.extra.update(hours=round(tally.seconds / 3600, 3), rejected=len(tally.rejects))
    progress.finish()


def _write_item(
    plan: Plan,
    group: Group,
    item: Item | Bad,
    tars: Sequence[TarShard],
    manifests: Sequence[IO[bytes]],
    tally: _Tally,
) -> None:
    """One item into its shard, or into the rejects with the reason."""
    if isinstance(item, Bad):
        tally.rejects.add(item.id, item.source, item.reason, item.detail)
        return
    result = checks.check(item.audio, item.text, item.duration, plan.rules)
    if isinstance(result, checks.Refusal):
        tally.rejects.add(item.id, item.source, result.reason, result.detail)
        return
    stem = member_stem(item.id)
    shard_id, key = shard_for(plan.seed, stem, group)
    if key in tally.seen:
        tally.rejects.add(item.id, item.source, checks.DUPLICATE_ID, f"an earlier item is named {stem}")
        return
    tally.seen.add(key)
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
    tally.add(slot, result.duration)


def _open_shards(
    stack: contextlib.ExitStack, out_dir: str, group: Group
) -> tuple[list[TarShard], list[IO[bytes]]]:
    storage.makedirs(storage.join(out_dir, layout.SHARDED_MANIFESTS_DIR))
    tars, manifests = [], []
    for shard_id in group.shard_ids:
        tar_out = stack.enter_context(storage.atomic_writer(storage.join(out_dir, layout.tar_name(shard_id))))
        shard = TarShard(tar_out)
        # the end-of-archive blocks go in before the file is renamed (harmless on failure)
        stack.callback(shard.close)
        tars.append(shard)
        uri = storage.join(out_dir, layout.sharded_manifest_name(shard_id))
        manifests.append(stack.enter_context(storage.atomic_writer(uri)))
    return tars, manifests


def _manifest_base(shard_id: int) -> str:
    return storage.basename(layout.sharded_manifest_name(shard_id))


def _remove_stale_temporaries(out_dir: str, group: Group) -> None:
    """Delete temporary files a killed run of this group left behind (local disks only; on
    GCS they are in the lock's staging directory). Only the group lock's holder calls it."""
    if storage.is_gcs(out_dir):
        return
    manifests_dir = storage.join(out_dir, layout.SHARDED_MANIFESTS_DIR)
    for directory, make_name in ((out_dir, layout.tar_name), (manifests_dir, _manifest_base)):
        if not os.path.isdir(directory):
            continue
        prefixes = tuple(f"{storage.TEMP_PREFIX}{make_name(i)}." for i in group.shard_ids)
        for name in os.listdir(directory):
            if name.startswith(prefixes):
                storage.delete(os.path.join(directory, name))


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

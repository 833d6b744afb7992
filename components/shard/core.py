"""write-shards: validate every utterance and write NeMo's tarred dataset layout, streaming.

Output (``out_dir``), as NeMo's ``convert_to_tarred_audio_dataset.py`` lays it out::

    audio_<i>.tar                          utterances, member names ``<id>.<ext>``
    sharded_manifests/manifest_<i>.json    the manifest lines of shard i (with ``shard_id``)
    tarred_audio_manifest.json             all shards' lines, in shard order
    metadata.yaml                          NeMo's tarred-dataset metadata + counts and filters
    rejects.jsonl  card.json  _SUCCESS     what was refused and why; the card; done marker

The work is cut into groups that each own a range of shards (:mod:`~components.shard.plan`);
a group is written whole by one process (:mod:`~components.shard.group`, with the tar writer
of :mod:`~components.shard.tar`), groups run in a process pool here
(:mod:`~components.shard.workers`) or one KFP task each on a cluster, and the merge only
concatenates small manifests (:mod:`~components.shard.merge`). Member order is the
(deterministic) reading order and tar headers are fixed, so the same input, seed and number
of groups give byte-identical shards, whatever ``--workers`` is; a rerun skips finished
groups and redoes the others, which produces the same bytes as an uninterrupted run.

The output directory is guarded (:mod:`components.storage`): write-shards writes only into
an empty directory or its own earlier run (``_ASRFLOW``), the run and the merge hold the
directory's lock and each group holds its own, so a second writer fails at once naming the
first, and only the lock's holder removes temporary files. Pool workers die with the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from components import audio as checks
from components import layout, outputs, storage
from components.manifest import DEFAULT_MAX_REJECT_FRACTION
from components.shard.card import GroupCard, ShardsCard
from components.shard.errors import ShardError
from components.shard.group import write_group
from components.shard.merge import finished_card, merge
from components.shard.plan import Plan, make_plan
from components.shard.workers import write_all_groups
from components.sources import open_source

log = logging.getLogger("asrflow.write_shards")

STEP = ShardsCard.STEP

__all__ = [
    "ShardError",
    "default_out_dir",
    "merge_groups",
    "write_shards",
]


def run_lock(out_dir: str) -> str:
    return outputs.lock_uri(out_dir)


@contextlib.contextmanager
def guarded(out_dir: str) -> Iterator[outputs.Lock]:
    """Hold ``out_dir``'s lock and make sure it is write-shards' own (or empty)."""
    try:
        with outputs.locked(run_lock(out_dir), STEP) as lock:
            outputs.claim_output(out_dir, STEP)
            yield lock
    except outputs.OutputError as err:
        raise ShardError(f"{STEP}: {err}") from None


def _finished(out_dir: str, settings_id: str) -> ShardsCard | None:
    """The card of a dataset write-shards finished in ``out_dir`` with these settings, looked
    up without the lock (a rerun on unchanged data only reads)."""
    if outputs.owner_of(out_dir) != STEP:
        return None
    return finished_card(out_dir, settings_id)


def default_out_dir(input_uri: str, plan: Plan) -> str:
    """``…/raw`` (a download's output) -> ``…/tarred/<N>-shards-seed<S>-<settings>``.

    The key changes with the input and every setting, so a rerun finds its own work and a
    run with other settings never mixes with it.
    """
    uri = input_uri
    if storage.basename(uri) == layout.CARD_NAME:
        uri = storage.parent(uri)
    if storage.basename(uri) != layout.RAW_DIR:
        raise ShardError(f"{STEP}: give --out (an output directory) for input {uri}")
    tag = f"{plan.num_shards}-shards-seed{plan.seed}-{plan.settings_id[:8]}"
    return storage.join(storage.parent(uri), layout.TARRED_DIR, tag)


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
    input_uri: str, group_cards: Sequence[Mapping[str, Any]], max_reject_fraction: float
) -> dict[str, Any]:
    """Merge after a fan-out, with the settings the group tasks recorded in their cards.

    Args:
        input_uri: the INPUT the groups read.
        group_cards: every group task's card (:class:`GroupCard`, as JSON), in any order.
        max_reject_fraction: fail when more than this fraction of items is faulty.

    Returns:
        The dataset's card (:class:`ShardsCard`, as written to ``card.json``).
    """
    if not group_cards:
        raise ShardError(f"{STEP}: nothing to merge (no group cards)")
    found = [GroupCard.from_dict(data, where=f"group card {i}") for i, data in enumerate(group_cards)]
    settings = found[0].settings
    if settings is None:
        raise ShardError(f"{STEP}: group {found[0].group}'s card has no settings (not from a --group run)")
    for card in found[1:]:
        if card.settings != settings:
            raise ShardError(
                f"{STEP}: group {card.group} ran with other settings than group "
                f"{found[0].group}: {card.settings} vs {settings}"
            )
    source = open_source(input_uri, split=settings["split"])
    rules = checks.Rules(**settings["rules"])
    plan = make_plan(source, settings["num_shards"], settings["seed"], rules, settings["groups_requested"])
    out_dir = settings["out_dir"]
    finished = _finished(out_dir, plan.settings_id)
    if finished is None:
        with guarded(out_dir):
            finished = merge(plan, out_dir, max_reject_fraction)
    return finished.to_dict()


def _write_one_group(
    plan: Plan, group: int, groups: int | None, out_dir: str, split: str | None
) -> GroupCard:
    """Group ``group`` alone (a fan-out task): its card, with the settings the merge needs."""
    count = groups or len(plan.groups)
    if not 0 <= group < count:
        raise ValueError(f"--group {group} is outside 0..{count - 1}")
    try:
        outputs.Lock(run_lock(out_dir), STEP).probe()  # a whole run or a merge is writing
    except outputs.OutputError as err:
        raise ShardError(f"{STEP}: {err}") from None
    if group < len(plan.groups):
        card = write_group(plan, group, out_dir, claim=True)
    else:
        log.info("%s: group %d has no files (input has %d), nothing to do", STEP, group, len(plan.groups))
        card = GroupCard(
            out_dir=out_dir,
            settings_id=plan.settings_id,
            group=group,
            groups=count,
            shards=[],
            files=[],
            utterances=0,
            seconds=0.0,
            rejected=0,
            rejects_by_reason={},
            shard_utterances=[],
            shard_seconds=[],
        )
    return dataclasses.replace(card, settings=_settings(plan, out_dir, groups, split))


def write_shards(
    input_uri: str,
    out_dir: str | None,
    num_shards: int,
    seed: int,
    *,
    split: str | None = None,
    rules: checks.Rules | None = None,
    max_reject_fraction: float = DEFAULT_MAX_REJECT_FRACTION,
    workers: int = 1,
    groups: int | None = None,
    group: int | None = None,
    merge_only: bool = False,
) -> dict[str, Any]:
    """Write a NeMo tarred dataset from INPUT into ``out_dir``; return the card.

    Args:
        input_uri: a parquet directory, a download card (``card.json`` or its directory) or a
            NeMo manifest.
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
        group: write only this group (a KFP fan-out task) and return its card; no merge.
        merge_only: only merge groups written earlier (the KFP fan-in task).

    Returns:
        The card as JSON: the dataset's (:class:`ShardsCard`) or, with ``group``, the
        group's (:class:`GroupCard`).
    """
    rules = rules or checks.Rules()
    source = open_source(input_uri, split=split)
    plan = make_plan(source, num_shards, seed, rules, groups)
    settings_id = plan.settings_id
    out_dir = out_dir or default_out_dir(input_uri, plan)
    if group is not None:
        return _write_one_group(plan, group, groups, out_dir, split).to_dict()
    finished = _finished(out_dir, settings_id)
    if finished is None:
        with guarded(out_dir):
            finished = finished_card(out_dir, settings_id)
            if finished is None:
                if not merge_only:
                    write_all_groups(plan, out_dir, workers)
                finished = merge(plan, out_dir, max_reject_fraction)
    return finished.to_dict()

"""Merging finished groups into NeMo's tarred dataset: manifests, rejects, metadata, card.

The merge only concatenates small files: the sharded manifests into
``tarred_audio_manifest.json`` (in shard order) and the groups' rejects into
``rejects.jsonl``; then it writes ``metadata.yaml`` and the card, and ``_SUCCESS`` last,
holding the settings id, by which a rerun recognises a dataset finished with the same input
and settings and leaves it as it is.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from components import audio as checks
from components import layout, storage
from components.manifest import RejectThresholdExceeded
from components.shard.card import GroupCard, ShardsCard
from components.shard.errors import ShardError
from components.shard.group import group_rejects, read_group_card
from components.shard.plan import Plan

log = logging.getLogger("asrflow.write_shards")

STEP = ShardsCard.STEP


def nemo_range(count: int) -> str:
    """NeMo's brace range of ``count`` shard ids, ``_OP_0..<count-1>_CL_``."""
    return f"_OP_0..{count - 1}_CL_"


def finished_card(out_dir: str, settings_id: str) -> ShardsCard | None:
    """The card of the dataset already finished in ``out_dir`` with these settings, or None.

    A finished dataset is left as it is: a rerun (a retried or uncached KFP task on unchanged
    data) neither rewrites its files nor drops what later steps added to its metadata.yaml.

    Raises:
        ShardError: ``out_dir`` holds a dataset finished with other input or settings.
    """
    if not storage.is_complete(out_dir):
        return None
    written = storage.read_text(storage.join(out_dir, layout.SUCCESS_MARKER)).strip()
    if written != settings_id:
        raise ShardError(
            f"{out_dir} already holds a finished dataset made with other input or settings "
            f"(settings {written}, now {settings_id}); choose a new --out"
        )
    log.info("%s: %s is complete, nothing to do", STEP, out_dir)
    return ShardsCard.read(out_dir)


def merge(plan: Plan, out_dir: str, max_reject_fraction: float) -> ShardsCard:
    """Join finished groups: the full manifest, rejects, metadata, card, then ``_SUCCESS``.

    Raises:
        ShardError: a group has not finished, or nothing was accepted.
        RejectThresholdExceeded: too many faulty items (duration filters do not count).
    """
    settings_id = plan.settings_id
    finished_before = finished_card(out_dir, settings_id)
    if finished_before is not None:
        return finished_before
    groups = [read_group_card(out_dir, group, settings_id) for group in plan.groups]
    missing = [group.name for group, card in zip(plan.groups, groups, strict=True) if card is None]
    if missing:
        raise ShardError(f"{STEP}: cannot merge, groups not finished: {', '.join(missing)}")
    finished = [card for card in groups if card is not None]
    manifest_uri = storage.join(out_dir, layout.TARRED_MANIFEST_NAME)
    _concatenate(
        [storage.join(out_dir, layout.sharded_manifest_name(i)) for i in range(plan.num_shards)],
        manifest_uri,
    )
    rejects_uri = storage.join(out_dir, layout.REJECTS_NAME)
    _concatenate([group_rejects(out_dir, group) for group in plan.groups], rejects_uri)
    brace = nemo_range(plan.num_shards)
    card = ShardsCard(
        input=plan.source.uri,
        out_dir=out_dir,
        settings_id=settings_id,
        num_shards=plan.num_shards,
        seed=plan.seed,
        groups=len(plan.groups),
        filters=plan.rules.as_dict(),
        max_reject_fraction=max_reject_fraction,
        **_totals(finished),
        manifest=manifest_uri,
        metadata=storage.join(out_dir, layout.METADATA_NAME),
        rejects=rejects_uri,
        tarred_audio_filepaths=storage.join(out_dir, layout.tar_pattern(brace)),
        sharded_manifests=storage.join(out_dir, layout.sharded_manifest_name(brace)),
    )
    _check_threshold(card)
    if card.utterances == 0:
        raise ShardError(f"{STEP}: no utterance was accepted; see {rejects_uri}")
    storage.write_text(card.metadata, metadata_yaml(plan, card))
    card.write(echo=False)
    storage.mark_complete(out_dir, settings_id + "\n")
    return card


def _totals(groups: Sequence[GroupCard]) -> dict[str, Any]:
    """The card's counts, summed over the groups."""
    by_reason: dict[str, int] = {}
    for group in groups:
        for reason, count in group.rejects_by_reason.items():
            by_reason[reason] = by_reason.get(reason, 0) + count
    rejected = sum(by_reason.values())
    filtered = sum(count for reason, count in by_reason.items() if reason in checks.FILTER_REASONS)
    seconds = sum(group.seconds for group in groups)
    return {
        "utterances": sum(group.utterances for group in groups),
        "hours": round(seconds / 3600, 6),
        "seconds": round(seconds, 3),
        "rejected": rejected,
        "filtered": filtered,
        "faulty": rejected - filtered,
        "rejects_by_reason": dict(sorted(by_reason.items())),
        "shard_utterances": [n for group in groups for n in group.shard_utterances],
    }


def _check_threshold(card: ShardsCard) -> None:
    total = card.utterances + card.rejected
    faulty = card.faulty
    if total and faulty / total > card.max_reject_fraction:
        reasons = ", ".join(
            f"{reason}: {n}"
            for reason, n in card.rejects_by_reason.items()
            if reason not in checks.FILTER_REASONS
        )
        raise RejectThresholdExceeded(
            f"{STEP}: rejected {faulty} of {total} items as faulty ({faulty / total:.1%} > "
            f"--max-reject-fraction {card.max_reject_fraction:.1%}); by reason: {reasons}; "
            f"see {card.rejects}"
        )


def metadata_yaml(plan: Plan, card: ShardsCard) -> str:
    """NeMo's ``ASRTarredDatasetMetadata`` fields (no timestamp: the bytes stay the same),
    with what asrflow adds under ``asrflow``; estimate-buckets later fills the bucket fields."""
    import yaml

    rules = plan.rules
    metadata = {
        "version": 0,
        "num_samples_per_shard": card.utterances // plan.num_shards,
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
            "utterances": card.utterances,
            "hours": card.hours,
            "rejected": card.rejected,
            "rejects_by_reason": card.rejects_by_reason,
            "shard_utterances": card.shard_utterances,
        },
    }
    return yaml.safe_dump(metadata, sort_keys=False, default_flow_style=False, width=100)


def _concatenate(parts: list[str], target: str) -> None:
    with storage.atomic_writer(target) as out:
        for part in parts:
            with storage.open_read(part) as stream:
                while chunk := stream.read(storage.CHUNK_BYTES):
                    out.write(chunk)

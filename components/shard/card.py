"""The cards of write-shards: the dataset's (``write-shards``) and one group's (a fan-out task's)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, ClassVar

from components.cards import Card


@dataclasses.dataclass
class ShardsCard(Card):
    """A finished tarred dataset: what it was made from and with, counts, and its files.

    Attributes:
        out_dir: the tarred dataset's directory.
        input: the INPUT read (a parquet directory, a download's card.json, a manifest).
        settings_id: digest of the input files and every setting that changes the bytes.
        num_shards: ``audio_<i>.tar`` files written.
        seed: seed of the assignment of utterances to shards.
        groups: independent groups the input was cut into.
        filters: the validation rules (:class:`components.audio.Rules`).
        max_reject_fraction: the most faulty items allowed.
        utterances: utterances written.
        hours: their audio, in hours.
        seconds: their audio, in seconds.
        rejected: items refused (filtered and faulty).
        filtered: items refused by the duration filters.
        faulty: items refused as damaged or malformed.
        rejects_by_reason: refused items by reason.
        shard_utterances: utterances per shard, in shard order.
        manifest: the full tarred manifest.
        metadata: metadata.yaml.
        rejects: rejects.jsonl.
        tarred_audio_filepaths: the shards as NeMo's ``train_ds.tarred_audio_filepaths``.
        sharded_manifests: the sharded manifests as NeMo's ``train_ds.manifest_filepath``.
    """

    STEP: ClassVar[str] = "write-shards"
    input: str
    settings_id: str
    num_shards: int
    seed: int
    groups: int
    filters: dict[str, Any]
    max_reject_fraction: float
    utterances: int
    hours: float
    seconds: float
    rejected: int
    filtered: int
    faulty: int
    rejects_by_reason: dict[str, int]
    shard_utterances: list[int]
    manifest: str
    metadata: str
    rejects: str
    tarred_audio_filepaths: str
    sharded_manifests: str


@dataclasses.dataclass
class GroupCard(Card):
    """One group's shards written: what a ``write_shard_group`` task reports, the merge joins.

    A group's marker (``_groups/<group>.json``, written last) holds the same figures, without
    ``out_dir`` and ``settings`` (:meth:`marker_text`, :meth:`from_marker`).

    Attributes:
        out_dir: the tarred dataset's directory the group wrote into.
        settings_id: as :attr:`ShardsCard.settings_id`; a marker of other settings is an error.
        group: the group's index.
        groups: how many groups there are.
        shards: the shard ids it wrote, ``[first, end)``.
        files: the input (parts of files) it read.
        utterances: utterances written.
        seconds: their audio, in seconds.
        rejected: items refused.
        rejects_by_reason: refused items by reason.
        shard_utterances: utterances per shard of the group.
        shard_seconds: audio seconds per shard of the group.
        settings: what the merge rebuilds the plan from (a fan-out task's card only).
    """

    STEP: ClassVar[str] = "write-shard-group"
    MARKER_OMITS: ClassVar[tuple[str, ...]] = ("step", "out_dir", "settings")
    settings_id: str
    group: int
    groups: int
    shards: list[int]
    files: list[str]
    utterances: int
    seconds: float
    rejected: int
    rejects_by_reason: dict[str, int]
    shard_utterances: list[int]
    shard_seconds: list[float]
    settings: dict[str, Any] | None = None

    def marker_text(self) -> str:
        """The group's marker: its figures, one line of JSON."""
        figures = {key: value for key, value in self.to_dict().items() if key not in self.MARKER_OMITS}
        return json.dumps(figures, sort_keys=True) + "\n"

    @classmethod
    def from_marker(cls, out_dir: str, figures: Mapping[str, Any]) -> GroupCard:
        """The card of the group whose marker in ``out_dir`` holds ``figures``."""
        names = {field.name for field in dataclasses.fields(cls)} - set(cls.MARKER_OMITS)
        return cls(out_dir=out_dir, **{key: value for key, value in figures.items() if key in names})

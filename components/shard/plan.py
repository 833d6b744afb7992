"""How write-shards cuts its work: groups of input, each owning a range of shard ids.

Parquet input files are split into G groups of about equal bytes
(:func:`components.groups.split_groups`); the items of manifests are dealt to G groups like
cards (:func:`components.groups.deal_manifests`: group g reads items g, g+G, ...), so one
big manifest is written by G processes too. Group g owns the contiguous shard ids
``[g*N//G, (g+1)*N//G)`` and writes them completely, so groups run anywhere (a process pool,
one KFP task each on a cluster). Within a group each item goes to shard
``first + hash(seed, id) % count``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math

from components import audio as checks
from components.download.card import MANIFEST
from components.groups import Part, deal_manifests, split_groups
from components.sources import Source, open_source

LAYOUT_VERSION = 2
"""Bump when the same input and settings would give other bytes (2: injective member names,
manifests dealt to groups)."""
FILES_PER_GROUP = 8
MANIFEST_BYTES_PER_GROUP = 256 * 1024
"""Manifest bytes per group by default (about 1,000 lines, one to three hours of speech)."""
MAX_DEFAULT_GROUPS = 64
INTERLEAVE = 4
"""Input files a group reads at once (one item from each in turn); memory holds about one
parquet row group per open file."""


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
        cut = [[Part(info) for info in files] for files in split_groups(source.files, count)]
    made = []
    for index, parts in enumerate(cut):
        first = index * num_shards // count
        end = (index + 1) * num_shards // count
        made.append(Group(index, count, tuple(parts), first, end - first))
    return Plan(source, num_shards, seed, rules, tuple(made))


def group_specs(input_uri: str, max_groups: int, split: str | None = None) -> list[str]:
    """``"I/G"`` for every group of an input cut into at most ``max_groups`` (one per parquet
    file at most; a manifest is dealt to all ``max_groups``)."""
    if max_groups < 1:
        raise ValueError(f"max_groups must be at least 1, got {max_groups}")
    limit = group_limit(open_source(input_uri, split=split))
    count = min(max_groups, limit or max_groups)
    return [f"{index}/{count}" for index in range(count)]


def shard_for(seed: int, stem: str, group: Group) -> tuple[int, int]:
    """(shard id, 64-bit key) for an item: a seeded hash picks one of the group's shards."""
    digest = hashlib.blake2b(f"{seed}\0{stem}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    key = int.from_bytes(digest, "big")
    return group.first_shard + key % group.num_shards, key

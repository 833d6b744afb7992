"""Cutting an INPUT's files into groups for parallel work, deterministically.

Parquet files are split whole into groups of about equal bytes (:func:`split_groups`); a
manifest's lines are dealt out to groups like cards (:func:`deal_manifests`). Either way the
cut depends only on the files and the number of groups, never on how many workers run them.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Sequence

from components import storage


@dataclasses.dataclass(frozen=True)
class Part:
    """What one group reads of one input file: all of it, or (a manifest) every ``stride``-th
    item from the ``offset``-th on, counting non-blank lines from 0."""

    info: storage.FileInfo
    stride: int = 1
    offset: int = 0

    @property
    def uri(self) -> str:
        return self.info.uri

    def describe(self) -> str:
        if self.stride == 1:
            return self.info.uri
        return f"{self.info.uri} (item {self.offset} and every {self.stride}th after it)"


def deal_manifests(files: Sequence[storage.FileInfo], num_groups: int) -> list[list[Part]]:
    """Deal manifest lines to ``num_groups`` groups like cards: group g reads items g, g+G,
    g+2G, ... of every manifest (non-blank lines, counted from 0).

    Every group then holds a sample of the whole manifest (a manifest sorted by speaker or
    duration still makes mixed shards), the groups get equal shares, and the cut depends only
    on the bytes and G: never on how many workers write them.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    ordered = sorted(files, key=lambda f: f.uri)
    return [[Part(info, num_groups, index) for info in ordered] for index in range(num_groups)]


def split_groups(files: Sequence[storage.FileInfo], num_groups: int) -> list[list[storage.FileInfo]]:
    """Cut files into at most ``num_groups`` groups of about equal bytes, deterministically.

    Largest file first to the lightest group (ties: the lower group index); each group's
    files are then in URI order. The same files and count always give the same groups.
    """
    if num_groups < 1:
        raise ValueError(f"num_groups must be at least 1, got {num_groups}")
    count = min(num_groups, len(files))
    groups: list[list[storage.FileInfo]] = [[] for _ in range(count)]
    heap = [(0, index) for index in range(count)]
    for info in sorted(files, key=lambda f: (-f.size, f.uri)):
        load, index = heapq.heappop(heap)
        groups[index].append(info)
        heapq.heappush(heap, (load + info.size, index))
    return [sorted(group, key=lambda f: f.uri) for group in groups]

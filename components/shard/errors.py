"""The write-shards step's error."""

from __future__ import annotations


class ShardError(RuntimeError):
    """write-shards cannot go on (settings clash with an earlier run, missing groups, no data)."""

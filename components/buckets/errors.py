"""The estimate-buckets step's error."""

from __future__ import annotations


class BucketError(ValueError):
    """Input that cannot give duration bins; the message says which file and why."""

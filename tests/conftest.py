"""Shared pytest fixtures; each area keeps its own in ``tests/fixtures/<area>.py``."""

import importlib.util

pytest_plugins = [
    name
    for name in (
        "tests.fixtures.corpus",
        "tests.fixtures.gcs",
        "tests.fixtures.shards",
        "tests.fixtures.models",
    )
    if importlib.util.find_spec(name) is not None
]

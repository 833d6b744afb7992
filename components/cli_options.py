"""Command-line options that several steps share, declared once."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from components.manifest import DEFAULT_MAX_REJECT_FRACTION


def max_reject_fraction(unusable: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--max-reject-fraction``: fail when more than this share of ``unusable`` is skipped.

    Args:
        unusable: what counts as unusable, e.g. "of manifest lines is unusable (bad JSON)".
    """
    return click.option(
        "--max-reject-fraction",
        type=click.FloatRange(0, 1),
        default=DEFAULT_MAX_REJECT_FRACTION,
        show_default=True,
        help=f"Fail when more than this fraction {unusable}.",
    )

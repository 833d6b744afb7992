"""The evaluate step's error."""

from __future__ import annotations


class EvaluateError(ValueError):
    """Bad input to the evaluate step; the message names the file, line or field."""

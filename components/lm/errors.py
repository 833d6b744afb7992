"""The train-lm step's error."""

from __future__ import annotations


class LmError(ValueError):
    """Bad input to train-lm; the message names the file or setting and what is wrong."""

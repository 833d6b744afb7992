"""The download step's error."""

from __future__ import annotations


class DownloadError(ValueError):
    """A source or option that cannot work; the message names the file, column or path."""

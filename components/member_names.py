"""File names for utterances: a stem per id that is safe in tars and for NeMo, and distinct per id."""

from __future__ import annotations

import hashlib
import re

AUDIO_SUFFIX = re.compile(r"\.(flac|wav|mp3|ogg|opus)$", re.IGNORECASE)
"""An audio file's extension at the end of an id or path (dropped from ids made of paths)."""
_NOT_MEMBER_SAFE = re.compile(r"[^A-Za-z0-9_-]")
_MEMBER_SAFE = re.compile(r"[A-Za-z0-9_-]+")
_ESCAPED_STEM = re.compile(r"-[0-9a-f]{16}\Z")
MAX_MEMBER_STEM = 95
"""So that ``<stem>.<ext>`` (an extension of up to 4 letters) fits the 100 bytes of a plain tar
header: one 512-byte block a member, no PAX extension."""


def member_stem(item_id: str) -> str:
    """A file-name stem for an id: safe in tars and for NeMo (letters, digits, '_' and '-' only:
    no '/' and no '.'), at most :data:`MAX_MEMBER_STEM` long, and distinct for distinct ids.

    An id that already is such a stem is its own stem. Any other id (``a.b``, ``x/y.flac``,
    one too long) becomes a readable form (audio suffix dropped, other characters as '_')
    plus '-' and 16 hex digits of a hash of the id, so ``a.b`` and ``a_b`` stay apart. Only
    these end in '-' and 16 hex digits: an id that does is treated as one to escape too.
    """
    if (
        len(item_id) <= MAX_MEMBER_STEM
        and _MEMBER_SAFE.fullmatch(item_id)
        and not _ESCAPED_STEM.search(item_id)
    ):
        return item_id
    readable = _NOT_MEMBER_SAFE.sub("_", AUDIO_SUFFIX.sub("", item_id)) or "_"
    digest = hashlib.blake2b(item_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
    return f"{readable[: MAX_MEMBER_STEM - 17]}-{digest}"

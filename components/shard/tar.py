"""The tar writer of write-shards: tarfile's bytes, in constant memory, fast.

Why not :class:`tarfile.TarFile`: the bytes are the same (a test compares every header with
``TarInfo.tobuf``), but a TarFile keeps a ``TarInfo`` for every member it wrote, so its
memory grows with the shard, and a group keeps one open for each of its shards, for the whole
run; and it builds each header field by field, which costs about ten times what filling in a
template does (People's Speech has millions of utterances). Lhotse's ``TarWriter`` wraps
TarFile and inherits both. Headers are fixed (mtime 0, uid/gid 0, mode 0644, no user
names), so the same members in the same order give the same bytes.

The writer appends to any binary file object; write-shards gives it the temporary file of
:func:`components.storage.atomic_writer` (renamed, or on GCS uploaded, once complete).
"""

from __future__ import annotations

import os
import tarfile
from typing import IO

WRITEBACK_BYTES = 8 * 1024 * 1024
"""A shard asks the kernel to start writing itself to disk every this many bytes."""
_USTAR_MAX_SIZE = 8**11 - 1


def member_info(name: str, size: int) -> tarfile.TarInfo:
    """The fixed header fields every member gets: only name and size vary."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _header_template() -> bytes:
    header = bytearray(member_info("x", 0).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))
    header[0:100] = bytes(100)
    return bytes(header)


_HEADER_TEMPLATE = _header_template()


def member_header(name: str, size: int) -> bytes:
    """The tar header ``TarInfo.tobuf(PAX_FORMAT)`` writes for :func:`member_info`.

    Names of up to 100 ASCII characters (all of People's Speech's) fit one plain ustar
    block: tarfile's template with the name, the size and the checksum filled in, which
    costs a tenth of building it field by field. Longer names get tarfile's PAX header.
    """
    encoded = name.encode("ascii", "surrogateescape") if name.isascii() else b""
    if not encoded or len(encoded) > 100 or size > _USTAR_MAX_SIZE:
        return member_info(name, size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    header = bytearray(_HEADER_TEMPLATE)
    header[0 : len(encoded)] = encoded
    header[124:136] = b"%011o\0" % size
    header[148:156] = b"        "
    header[148:156] = b"%06o\0 " % sum(header)
    return bytes(header)


class TarShard:
    """Appends members to a tar stream with fixed headers, keeping nothing per member.

    The framing is tarfile's own (a header as ``TarInfo.tobuf`` makes it, data padded to
    512 bytes, two zero blocks and padding to a 10 KiB record at the end), without tarfile's
    list of members, which would grow with the shard. Members collect in a buffer of
    ``buffer_bytes`` so that a shard of small utterances costs few system calls; every
    WRITEBACK_BYTES the kernel is asked to start writing the file out.
    """

    def __init__(self, out: IO[bytes], buffer_bytes: int = 256 * 1024) -> None:
        self.out = out
        self.offset = 0
        self.members = 0
        self.buffer = bytearray()
        self.buffer_bytes = buffer_bytes
        self._written_back = 0

    def add(self, name: str, data: bytes) -> None:
        header = member_header(name, len(data))
        padding = -len(data) % tarfile.BLOCKSIZE
        buffer = self.buffer
        buffer += header
        buffer += data
        if padding:
            buffer += tarfile.NUL * padding
        self.offset += len(header) + len(data) + padding
        self.members += 1
        if len(buffer) >= self.buffer_bytes:
            self.flush()

    def flush(self) -> None:
        self.out.write(self.buffer)
        self.buffer.clear()
        if self.offset - self._written_back >= WRITEBACK_BYTES:
            self._written_back = self.offset
            self._start_writeback()

    def _start_writeback(self) -> None:
        """Ask the kernel to write what it holds of this file to disk now (and then to drop it
        from the page cache), so that the disk works while the next items are checked and the
        fsync before the rename finds little left to write."""
        try:
            self.out.flush()
            os.posix_fadvise(self.out.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        except (AttributeError, OSError, ValueError):
            pass  # not a plain file, or no posix_fadvise here: the fsync does it all

    def close(self) -> None:
        end = self.offset + 2 * tarfile.BLOCKSIZE
        end += -end % tarfile.RECORDSIZE
        self.buffer += tarfile.NUL * (end - self.offset)
        self.offset = end
        self.flush()

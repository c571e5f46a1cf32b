"""I/O around the page cache (O_DIRECT), where the file system takes it.

A backup reads each block of an image once, a restore writes each once, a local repository
writes each pack once and fsyncs it at once: through the page cache every byte costs a kernel
copy, evicts what the host was caching, and a restore's writing threads queue on the file's
lock. Direct I/O wants buffers, offsets and lengths aligned to the device's logical block
(4096 covers every Linux file system and EBS); what is not aligned (a short last block, an
object's last partial page) goes buffered, and so does everything where O_DIRECT is refused.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

ALIGN = 4096
# How a file system that cannot do direct I/O (some FUSE, tmpfs before Linux 6.6) refuses it:
# at open, or at the first read or write.
UNSUPPORTED = (errno.EINVAL, errno.EOPNOTSUPP)


def open_direct(path: str | Path, flags: int) -> int | None:
    """`os.open(path, flags | O_DIRECT)`, or None where O_DIRECT is missing or refused."""
    direct = getattr(os, "O_DIRECT", 0)
    if not direct:
        return None
    try:
        return os.open(path, flags | direct)
    except OSError as exc:
        if exc.errno in UNSUPPORTED:
            return None
        raise


def aligned_buffer(size: int) -> memoryview:
    """A writable view of `size` bytes starting on an ALIGN boundary (of a bytearray that lives
    as long as the view), from the heap: reused memory, unlike a fresh mmap per buffer."""
    raw = bytearray(size + ALIGN)
    start = -ctypes.addressof(ctypes.c_char.from_buffer(raw)) % ALIGN
    return memoryview(raw)[start : start + size]


def refused(exc: OSError) -> bool:
    """The file system refused a direct read or write (the caller goes buffered)."""
    return exc.errno in UNSUPPORTED

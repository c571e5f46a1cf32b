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
import threading
from pathlib import Path

from ec2backup.repository.blockmap import EBS_BLOCK_SIZE

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


class BlockWriter:
    """Block writes into a file or device being restored, from any number of threads, around
    the page cache (O_DIRECT) where it is taken. Through the page cache, an image restore's two
    writing threads spent more CPU copying into it and spinning on the file's lock (ext4 takes
    it for every buffered write) than on decrypting and decompressing (measured here: 69% of
    its CPU). Each thread copies a block into an aligned buffer of its own (a few
    microseconds) and writes it from there. What cannot go direct (a short last block, an
    unaligned offset, every block once the file system refused one) is written buffered
    through `fd`, the caller's own descriptor of the same file, which it fsyncs as before."""

    def __init__(self, path: Path, fd: int) -> None:
        self._fd = fd
        self._dfd = open_direct(path, os.O_WRONLY)
        self._local = threading.local()
        self.direct_writes = 0  # blocks written around the page cache (tests, logs)

    def write(self, off: int, data: bytes | memoryview) -> None:
        if not self._write_direct(off, data):
            view = memoryview(data)
            while view:
                n = os.pwrite(self._fd, view, off)
                view = view[n:]
                off += n

    def _write_direct(self, off: int, data: bytes | memoryview) -> bool:
        n = len(data)
        if self._dfd is None or n % ALIGN or off % ALIGN or n > EBS_BLOCK_SIZE:
            return False
        buf: memoryview | None = getattr(self._local, "buf", None)
        if buf is None:
            buf = self._local.buf = aligned_buffer(EBS_BLOCK_SIZE)
        view = buf[:n]
        view[:] = data
        try:
            done = os.pwrite(self._dfd, view, off)
        except OSError as exc:
            if not refused(exc):
                raise
            self.close()  # refused once: the rest goes buffered
            return False
        self.direct_writes += done == n
        return done == n  # short: the whole block again, buffered

    def close(self) -> None:
        dfd, self._dfd = self._dfd, None
        if dfd is not None:
            os.close(dfd)

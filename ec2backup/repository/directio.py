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
    """Writes into a file or device at given offsets, from any number of threads, around the
    page cache (O_DIRECT) where it is taken. Through the page cache, an image restore's two
    writing threads spent more CPU copying into it and spinning on the file's lock (ext4 takes
    it for every buffered write) than on decrypting and decompressing (measured here: 69% of
    its CPU). A write's aligned part goes direct, copied first into an aligned buffer of the
    thread's own (a few microseconds) unless the caller says it already lies in one; the rest
    (an unaligned offset, a last partial page, a write longer than `max_write`, every write once
    the file system refused one, a short direct write) goes buffered through `fd`, the caller's
    own descriptor of the same file, which it fsyncs as before."""

    def __init__(self, path: str | Path, fd: int, max_write: int = EBS_BLOCK_SIZE) -> None:
        self._fd = fd
        self._max = max_write
        self._dfd = open_direct(path, os.O_WRONLY)
        self._local = threading.local()
        self.direct_writes = 0  # writes that went around the page cache (tests, logs)

    def write(self, off: int, data: bytes | memoryview, aligned: bool = False) -> None:
        """`aligned`: `data` lies in an ALIGN-aligned buffer already (written from there)."""
        view = memoryview(data)
        head = len(view) - len(view) % ALIGN
        if (
            off % ALIGN == 0
            and 0 < head <= self._max
            and self._write_direct(off, view[:head], aligned)
        ):
            off += head
            view = view[head:]
        while view:
            n = os.pwrite(self._fd, view, off)
            view = view[n:]
            off += n

    def _write_direct(self, off: int, view: memoryview, aligned: bool) -> bool:
        if self._dfd is None:
            return False
        if not aligned:
            buf: memoryview | None = getattr(self._local, "buf", None)
            if buf is None:
                buf = self._local.buf = aligned_buffer(self._max)
            buf[: len(view)] = view
            view = buf[: len(view)]
        try:
            done = os.pwrite(self._dfd, view, off)
        except OSError as exc:
            if not refused(exc):
                raise
            self.close()  # refused once: the rest goes buffered
            return False
        self.direct_writes += done == len(view)
        return done == len(view)  # short: all of it again, buffered

    def close(self) -> None:
        dfd, self._dfd = self._dfd, None
        if dfd is not None:
            os.close(dfd)

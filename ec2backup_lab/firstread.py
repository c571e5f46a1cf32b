"""Lazy hydration of volumes created from snapshots: the first read of a block is slow.

On AWS the blocks of a volume created from a snapshot are fetched from S3 the first time they
are read ("volume initialization"); later reads are EBS-fast. The lab's volume files hold
their bytes at once, so the model lives in the process that reads them, without touching the
product: while the timing model is on, the lab starts worker agents with `PYTHONPATH` leading
to `<lab>/agent-site/`, whose `sitecustomize.py` is a copy of this file (`write_agent_site`);
Python imports it at start-up and it wraps `os.pread`, the one call the agent reads devices
with (`worker_agent/devices.py`, `DeviceReader.read_block`).

State, per volume, in a file beside the volume's image (`<vol>.img.firstread`): a header with
the rate, then one byte per 512 KiB block, 1 while the block is still "in S3" (the snapshot
holds it and nobody has read it), 0 once read (or for a block the snapshot never held: nothing
to fetch). CreateVolume writes it (`prepare_volume`) with the rate in effect then, as AWS fixes
a volume's initialization rate at creation. The state is shared by every process that reads the
volume (a re-provisioned worker does not pay twice); the pacing of the rate is per process (two
processes reading one volume at once would each get the rate).

Only stdlib here: the copy runs in the agent's interpreter, which may be a worker venv that
has no lab installed.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

BLOCK_BYTES = 512 * 1024
MIB = 1024 * 1024
SUFFIX = ".firstread"
# A fixed-size JSON header before the per-block bytes, so a block's byte is at a known offset.
HEADER_BYTES = 256
AGENT_SITE_DIR = "agent-site"


def state_path(image: Path) -> Path:
    return image.with_name(image.name + SUFFIX)


# -- the lab side --------------------------------------------------------------------------
def prepare_volume(image: Path, blocks: list[int], blocks_total: int, mib_s: float) -> None:
    """Mark `blocks` of a new volume as not yet loaded, to be read at `mib_s` MiB/s."""
    header = json.dumps({"mib_s": mib_s, "blocks_total": blocks_total}).encode()
    if len(header) > HEADER_BYTES:
        raise ValueError("first-read header too long")
    fd = os.open(state_path(image), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.pwrite(fd, header.ljust(HEADER_BYTES, b" "), 0)
        os.ftruncate(fd, HEADER_BYTES + blocks_total)  # sparse: every block 0 (nothing to load)
        run_start, run = 0, 0
        for index in sorted(i for i in blocks if 0 <= i < blocks_total):
            if run and index == run_start + run:
                run += 1
                continue
            if run:
                os.pwrite(fd, b"\1" * run, HEADER_BYTES + run_start)
            run_start, run = index, 1
        if run:
            os.pwrite(fd, b"\1" * run, HEADER_BYTES + run_start)
    finally:
        os.close(fd)


def remove_volume(image: Path) -> None:
    state_path(image).unlink(missing_ok=True)


def write_agent_site(lab_root: Path) -> Path:
    """`<lab>/agent-site/sitecustomize.py` (this module) for agents' `PYTHONPATH`."""
    site = lab_root / AGENT_SITE_DIR
    site.mkdir(parents=True, exist_ok=True)
    target = site / "sitecustomize.py"
    source = Path(__file__).read_text()
    if not target.exists() or target.read_text() != source:
        tmp = target.with_suffix(".tmp")
        tmp.write_text(source)
        os.replace(tmp, target)
    return site


# -- the agent side ------------------------------------------------------------------------
class _Volume:
    """One hydrating volume as this process sees it: its state file and its pacing."""

    def __init__(self, state: Path) -> None:
        self.fd = os.open(state, os.O_RDWR)
        header = json.loads(_real_pread(self.fd, HEADER_BYTES, 0).decode().strip())
        self.bytes_per_second = float(header["mib_s"]) * MIB
        self.blocks_total = int(header["blocks_total"])
        self.lock = threading.Lock()
        self.next_free = 0.0  # monotonic time the volume's S3 fetches are busy until

    def pay(self, offset: int, length: int) -> None:
        """Wait for the blocks of [offset, offset+length) not loaded yet, then mark them."""
        if length <= 0 or self.bytes_per_second <= 0:
            return
        first = offset // BLOCK_BYTES
        last = min((offset + length - 1) // BLOCK_BYTES, self.blocks_total - 1)
        if last < first:
            return
        marks = _real_pread(self.fd, last - first + 1, HEADER_BYTES + first)
        pending = marks.count(1)
        if not pending:
            return
        cost = pending * BLOCK_BYTES / self.bytes_per_second
        with self.lock:  # the volume's fetches queue behind each other: a rate per volume
            now = time.monotonic()
            self.next_free = max(now, self.next_free) + cost
            wait = self.next_free - now
        time.sleep(wait)
        os.pwrite(self.fd, bytes(len(marks)), HEADER_BYTES + first)


_real_pread = os.pread
_volumes: dict[tuple[str, int], _Volume | None] = {}
_volumes_lock = threading.Lock()


def _volume_of(fd: int) -> _Volume | None:
    try:
        path = os.readlink(f"/proc/self/fd/{fd}")
        key = (path, os.fstat(fd).st_ino)
    except OSError:
        return None
    with _volumes_lock:
        if key in _volumes:
            return _volumes[key]
    state = state_path(Path(path))
    volume: _Volume | None = None
    if path.endswith(".img") and state.exists():
        try:
            volume = _Volume(state)
        except (OSError, ValueError, KeyError):
            volume = None
    with _volumes_lock:
        return _volumes.setdefault(key, volume)


def _pread(fd: int, length: int, offset: int, /) -> bytes:
    volume = _volume_of(fd)
    if volume is not None:
        volume.pay(offset, length)
    return _real_pread(fd, length, offset)


def install() -> None:
    """Wrap `os.pread` in this process (idempotent)."""
    if os.pread is not _pread:
        os.pread = _pread


if __name__ == "sitecustomize":  # imported at start-up from <lab>/agent-site/
    install()

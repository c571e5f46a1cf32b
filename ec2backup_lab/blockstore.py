"""Where the lab keeps EBS data: a content-addressed block store and volumes as sparse files.

- A *block* is 512 KiB, the EBS direct API unit. Blocks live once, by content hash, under
  `<lab>/blocks/<xx>/<hash>`; snapshots are maps `block index -> hash` (so a snapshot or a
  cross-Region copy costs no data copy, like EBS's incremental snapshots).
- A block never put into an *encrypted* EBS-direct snapshot reads as random bytes on AWS (the
  decryption of nothing; awslabs/coldsnap#395, bottlerocket-os/bottlerocket#2169). The lab
  names such content `unwritten:<snapshot id>:<index>` instead of a hash: deterministic
  pseudo-random bytes generated on read, never stored (`noise_block`).
- A *volume* is a sparse file `<lab>/volumes/<account>/<region>/<vol-id>.img` that worker
  processes read and write like a block device. The lab keeps the volume's current block map
  in step with its own writes, so a snapshot of a lab-written volume is a dict copy (cheap for
  GiB of data). A write by anyone else (an agent restoring into the device) is detected by
  the file's mtime no longer carrying the lab's sentinel value, and then the next snapshot
  rescans the file's allocated extents (SEEK_DATA/SEEK_HOLE) instead.
"""

from __future__ import annotations

import base64
import errno
import itertools
import os
import threading
from pathlib import Path

import blake3

# The EBS direct API block size: every index, token and checksum is per 512 KiB.
EBS_BLOCK_SIZE = 512 * 1024
GIB = 1024**3
ZERO_BLOCK = bytes(EBS_BLOCK_SIZE)

# Lab-written volumes get an mtime from this clock (nanoseconds since the epoch, around the
# year 2001), never reachable by a real write "now": any other writer moves the mtime away.
_SENTINEL_BASE_NS = 1_000_000_000 * 10**9
_sentinel_counter = itertools.count(1)


def content_hash(data: bytes) -> str:
    return blake3.blake3(data).hexdigest()


# Digest prefix of a block that is the random content of a never-put encrypted block.
NOISE_PREFIX = "unwritten:"


def noise_digest(seed: str, index: int) -> str:
    return f"{NOISE_PREFIX}{seed}:{index}"


def noise_block(digest: str) -> bytes:
    """The bytes of a `noise_digest`: what AWS returns for a hole of an encrypted snapshot."""
    return blake3.blake3(digest.encode()).digest(length=EBS_BLOCK_SIZE)


def block_token(snapshot_id: str, index: int, digest: str) -> str:
    """An opaque token naming one block of one snapshot (checked by GetSnapshotBlock)."""
    raw = f"{snapshot_id}:{index}:{digest}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


class BlockStore:
    def __init__(self, root: Path) -> None:
        self.dir = root / "blocks"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, digest: str) -> Path:
        return self.dir / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Store a block (idempotent) and return its content hash."""
        digest = content_hash(data)
        path = self.path(digest)
        if not path.exists():
            path.parent.mkdir(exist_ok=True)
            tmp = path.with_name(f".{digest}.{threading.get_ident()}.tmp")
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        return digest

    def read(self, digest: str) -> bytes:
        if digest.startswith(NOISE_PREFIX):
            return noise_block(digest)
        with open(self.path(digest), "rb") as f:
            return f.read()


def allocated_blocks(fd: int, size: int) -> list[int]:
    """Indexes of the 512 KiB blocks that hold any allocated extent of the file."""
    blocks: list[int] = []
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                break
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        first, last = start // EBS_BLOCK_SIZE, (min(end, size) - 1) // EBS_BLOCK_SIZE
        if blocks and blocks[-1] >= first:
            first = blocks[-1] + 1
        blocks.extend(range(first, last + 1))
        offset = end
    return blocks


class VolumeData:
    """The bytes of one EBS volume, with the block map the lab maintains for it."""

    def __init__(self, store: BlockStore, path: Path, size_gib: int) -> None:
        self.store = store
        self.path = path
        self.size_bytes = size_gib * GIB
        self.lock = threading.RLock()
        self.current: dict[int, str] = {}
        self._sentinel_ns = 0
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.truncate(self.size_bytes)
        self._mark()

    @property
    def blocks_total(self) -> int:
        return self.size_bytes // EBS_BLOCK_SIZE

    def _mark(self) -> None:
        self._sentinel_ns = _SENTINEL_BASE_NS + next(_sentinel_counter)
        os.utime(self.path, ns=(self._sentinel_ns, self._sentinel_ns))

    def _externally_modified(self) -> bool:
        return os.stat(self.path).st_mtime_ns != self._sentinel_ns

    def _rescan(self) -> None:
        current: dict[int, str] = {}
        with open(self.path, "rb", buffering=0) as f:
            fd = f.fileno()
            for index in allocated_blocks(fd, self.size_bytes):
                data = os.pread(fd, EBS_BLOCK_SIZE, index * EBS_BLOCK_SIZE)
                current[index] = self.store.put(data)
        self.current = current
        self._mark()

    def refresh(self) -> None:
        with self.lock:
            if self._externally_modified():
                self._rescan()

    def write_blocks(self, blocks: dict[int, bytes]) -> None:
        """Write whole blocks as the lab (seed, churn): data, store and map in one step."""
        with self.lock:
            self.refresh()
            with open(self.path, "r+b", buffering=0) as f:
                for index, data in blocks.items():
                    if len(data) != EBS_BLOCK_SIZE or not 0 <= index < self.blocks_total:
                        raise ValueError(f"bad block write at index {index}")
                    digest = self.store.put(data)
                    os.pwrite(f.fileno(), data, index * EBS_BLOCK_SIZE)
                    self.current[index] = digest
            self._mark()

    def snapshot_map(self) -> dict[int, str]:
        """The point-in-time block map of the volume."""
        with self.lock:
            self.refresh()
            return dict(self.current)

    def materialize(self, block_map: dict[int, str], noise: str | None = None) -> None:
        """Fill a new volume with a snapshot's blocks (CreateVolume with SnapshotId). With
        `noise` (an encrypted EBS-direct snapshot), every block the snapshot lacks reads as
        that snapshot's random bytes, as on AWS."""
        if noise is not None:
            size_blocks = -(-self.size_bytes // EBS_BLOCK_SIZE)
            block_map = {
                **{i: noise_digest(noise, i) for i in range(size_blocks) if i not in block_map},
                **block_map,
            }
        with self.lock, open(self.path, "r+b", buffering=0) as out:
            for index, digest in block_map.items():
                if index >= self.blocks_total:
                    continue
                if digest.startswith(NOISE_PREFIX):
                    os.pwrite(out.fileno(), noise_block(digest), index * EBS_BLOCK_SIZE)
                    continue
                with open(self.store.path(digest), "rb", buffering=0) as src:
                    offset = index * EBS_BLOCK_SIZE
                    copied = 0
                    while copied < EBS_BLOCK_SIZE:
                        n = os.copy_file_range(
                            src.fileno(),
                            out.fileno(),
                            EBS_BLOCK_SIZE - copied,
                            copied,
                            offset + copied,
                        )
                        if n == 0:
                            break
                        copied += n
            self.current = {i: d for i, d in block_map.items() if i < self.blocks_total}
            self._mark()

    def grow(self, size_gib: int) -> None:
        with self.lock:
            self.refresh()
            self.size_bytes = size_gib * GIB
            os.truncate(self.path, self.size_bytes)
            self._mark()

    def delete(self) -> None:
        with self.lock:
            self.path.unlink(missing_ok=True)

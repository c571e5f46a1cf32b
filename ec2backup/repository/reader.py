"""Reading volumes back: `restore_volume` (library; `image restore` and restores use it).

Blocks are fetched as ranged reads that cover runs of consecutive blobs in one pack (a full
backup lays blobs out in block order, so a restore reads packs nearly sequentially), decoded in
a small thread pool and written with pwrite at their offsets. Every blob is authenticated by
AES-GCM with its id as associated data, so corrupt or swapped data raises instead of being
written.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ec2backup import crypto
from ec2backup.repository.backend import ObjectMissing
from ec2backup.repository.blockmap import (
    EBS_BLOCK_SIZE,
    ID_SIZE,
    PAGE_BLOCKS,
    WRITTEN_ZERO_ID,
    ZERO_BLOCK,
    ZERO_ID,
)
from ec2backup.repository.index import BlobLoc
from ec2backup.repository.pack import BlobCodec
from ec2backup.repository.repo import CorruptObjectError, Repository, data_name
from ec2backup.repository.restorepoint import VolumeRecord

# Longest ranged read: big enough to amortize a GET (~1 ms of botocore CPU), small enough that
# two in flight per worker stay cheap in memory.
MAX_RUN_BYTES = 8 * 1024 * 1024

RESTORE_WORKERS = 2

MAX_INFLIGHT_RUNS = 4


WriteFn = Callable[[int, bytes | memoryview], None]


@dataclass
class Run:
    pack_id: str
    offset: int
    length: int = 0
    items: list[tuple[int, bytes, BlobLoc]] = field(default_factory=list)


@dataclass
class ZeroRun:
    """Consecutive blocks the source wrote as zeros (format version 2 maps): no blob to read."""

    start: int
    count: int


def plan_runs(
    repo: Repository, volume: VolumeRecord, *, zeros: bool = False, from_block: int = 0
) -> Iterator[Run | ZeroRun]:
    """Runs of blobs to fetch, in block order, of the blocks from `from_block` on; raises if
    the map names an unknown blob.

    With `zeros`, written zero blocks come as `ZeroRun`s too (in block order among the runs);
    holes never do."""
    index = repo.load_index()
    n_blocks = -(-volume.size // EBS_BLOCK_SIZE)
    run: Run | None = None
    zero_run: ZeroRun | None = None
    for p, page_id in enumerate(volume.pages):
        base = p * PAGE_BLOCKS
        if page_id is None or base + PAGE_BLOCKS <= from_block:
            continue
        page = repo.load_page(page_id)
        limit = min(PAGE_BLOCKS, n_blocks - base)
        for slot in range(max(0, from_block - base), limit):
            bid = page[slot * ID_SIZE : (slot + 1) * ID_SIZE]
            if bid == ZERO_ID:
                continue
            if bid == WRITTEN_ZERO_ID:
                if not zeros:
                    continue
                if zero_run is not None and zero_run.start + zero_run.count == base + slot:
                    zero_run.count += 1
                    continue
                if run is not None:  # keep block order: the blob run before it goes first
                    yield run
                    run = None
                if zero_run is not None:
                    yield zero_run
                zero_run = ZeroRun(base + slot, 1)
                continue
            if zero_run is not None:
                yield zero_run
                zero_run = None
            loc = index.blobs.get(bid) or repo.locate(bid)  # a marked pack, before its recovery
            if loc is None:
                raise CorruptObjectError(
                    f"blob {bid.hex()} referenced by map page {repo.object_name('map', page_id)} "
                    "is not in any index (repository damaged or pruned concurrently)"
                )
            if (
                run is not None
                and run.pack_id == loc.pack_id
                and run.offset + run.length == loc.offset
                and run.length + loc.length <= MAX_RUN_BYTES
            ):
                run.length += loc.length
                run.items.append((base + slot, bid, loc))
                continue
            if run is not None:
                yield run
            run = Run(loc.pack_id, loc.offset, loc.length, [(base + slot, bid, loc)])
    if run is not None:
        yield run
    if zero_run is not None:
        yield zero_run


def write_zero_run(zero_run: ZeroRun, size: int, write: WriteFn) -> int:
    """Write a run of zero blocks block by block (an EBS-direct write is one block)."""
    written = 0
    for block in range(zero_run.start, zero_run.start + zero_run.count):
        off = block * EBS_BLOCK_SIZE
        length = min(EBS_BLOCK_SIZE, size - off)
        write(off, memoryview(ZERO_BLOCK)[:length])
        written += length
    return written


def _fetch_run(repo: Repository, codec: BlobCodec, run: Run, size: int, write: WriteFn) -> int:
    name = data_name(run.pack_id)
    try:
        data = repo.backend.get_range(name, run.offset, run.length)
    except ObjectMissing as exc:
        raise CorruptObjectError(f"object {name} is missing (referenced by the index)") from exc
    if len(data) != run.length:
        raise CorruptObjectError(f"object {name} is corrupt: truncated")
    view = memoryview(data)
    written = 0
    for block, bid, loc in run.items:
        rel = loc.offset - run.offset
        try:
            plain = codec.decode(bid, view[rel : rel + loc.length], loc.compression, loc.raw_length)
        except (crypto.DecryptionError, ValueError) as exc:
            raise CorruptObjectError(
                f"object {name} is corrupt: blob {bid.hex()[:16]} at offset {loc.offset}: {exc}"
            ) from exc
        off = block * EBS_BLOCK_SIZE
        length = min(EBS_BLOCK_SIZE, size - off)
        write(off, memoryview(plain)[:length] if length < len(plain) else plain)
        written += length
    return written


def restore_volume(
    repo: Repository,
    volume: VolumeRecord,
    write: WriteFn,
    *,
    progress: Callable[[int], None] | None = None,
    workers: int = RESTORE_WORKERS,
    write_zeros: bool = False,
    from_block: int = 0,
    done_below: Callable[[int], None] | None = None,
) -> int:
    """Write every stored block of `volume` from block `from_block` on through
    `write(offset, data)`; returns bytes.

    Holes are never written: the target must read as zeros already (a fresh sparse file, a new
    EBS volume created empty). Written zero blocks are written too when `write_zeros` (so the
    target lists them as written, as the source did); else they are left like holes. `write`
    is called from worker threads (os.pwrite is fine). `done_below(n)` is called (from this
    thread) whenever every block below n has been handed to `write`: the caller may make that
    durable and checkpoint it (runs finish out of order; n only ever grows).
    """
    codec = BlobCodec(repo.data_key, repo.config.compression_level)
    total = 0
    inflight: collections.deque[tuple[Future[int], int]] = collections.deque()

    def settle() -> None:
        nonlocal total
        future, end = inflight.popleft()
        n = future.result()
        total += n
        if progress is not None:
            progress(n)
        if done_below is not None:
            done_below(end)

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="restore") as pool:
        try:
            for run in plan_runs(repo, volume, zeros=write_zeros, from_block=from_block):
                if isinstance(run, ZeroRun):
                    future = pool.submit(write_zero_run, run, volume.size, write)
                    end = run.start + run.count
                else:
                    future = pool.submit(_fetch_run, repo, codec, run, volume.size, write)
                    end = run.items[-1][0] + 1
                inflight.append((future, end))
                while len(inflight) > MAX_INFLIGHT_RUNS:
                    settle()
            while inflight:
                settle()
            if done_below is not None:
                done_below(-(-volume.size // EBS_BLOCK_SIZE))
        except BaseException:
            for f, _ in inflight:
                f.cancel()
            raise
    return total

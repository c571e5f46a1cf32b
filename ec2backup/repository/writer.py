"""Writing volumes into a repository: the `BackupWriter` library API and the commit.

The worker agent and `ec2backup image backup` (`repository.image`) share this code:

    with repo.lock(exclusive=False, purpose="backup"):
        recover_unindexed_packs(repo)          # adopt packs a crashed run left behind
        w = BackupWriter(repo, name="vol-1", size=size, parent=parent_volume)
        for i, block in blocks:                # strictly increasing block indexes
            w.add(i, block)                    # zero check, keyed hash, dedup, encode, pack
            ...
            cursor = w.checkpoint()            # optional: all before `cursor` is durable
        volume = w.finish()                    # packs -> index -> map pages are durable
        rp_id = commit_restore_point(repo, [volume], parent=...)

Ordering (crash safety): a pack is uploaded before the index file that names it; an index file
is written before any map page that references its blobs; pages before the checkpoint or restore
point that references them. A crash at any moment leaves only unreferenced (prunable) objects.
"""

from __future__ import annotations

import collections
import datetime as dt
import threading
import time
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from pydantic import BaseModel, Field

from ec2backup import crypto
from ec2backup.errors import UserError
from ec2backup.repository.blockmap import (
    EBS_BLOCK_SIZE,
    ID_SIZE,
    PAGE_BLOCKS,
    WRITTEN_ZERO_ID,
    ZERO_BLOCK,
    ZERO_ID,
    ZERO_PAGE,
    blocks_for,
    pages_for,
)
from ec2backup.repository.index import IndexPack, index_pack
from ec2backup.repository.pack import COMPRESSION_NONE, BlobCodec, PackBuilder, PackEntry
from ec2backup.repository.pack import pack_id as hash_pack
from ec2backup.repository.repo import Repository, data_name
from ec2backup.repository.restorepoint import (
    SUMMED_STATS,
    AnomalySignal,
    RestorePoint,
    RestorePointSource,
    VolumeMetadata,
    VolumeRecord,
    VolumeStats,
)

# Two encoder threads (keyed hash, dedup lookup, zstd, AES: all release the GIL); the machines
# we target have 2 vCPUs and the caller thread only reads and zero-checks.
DEFAULT_WORKERS = 2

# Blocks submitted to the encoders but not yet packed: enough to keep both busy while the caller
# reads, small enough to bound memory (each is 512 KiB in, <= 512 KiB out). Two per encoder:
# measured on the bench's 2 GiB full, 4 instead of 8 takes ~4 MiB off the peak RSS (104-107
# vs 109-110 MiB) at the same speed (median 3.73 s vs 3.70 s of 3 cold runs each).
MAX_INFLIGHT_BLOCKS = 4

# Packs uploading concurrently (each held in RAM): one uploads (pack id hash + PUT) while the
# next fills.
MAX_INFLIGHT_UPLOADS = 1

# Write an index file every few packs, so a crash loses at most this many packs' worth of index
# (and those packs are still adopted by recover_unindexed_packs on the next run).
INDEX_EVERY_PACKS = 4


# What an encoder returns for one block: (blob id, ciphertext or None if a duplicate, compression)
Encoded = tuple[bytes, bytes | None, int]


class Checkpoint(BaseModel):
    """Resumable state of an unfinished volume backup (`checkpoints/<key id>`)."""

    key: str
    name: str
    device: str | None = None
    size: int
    inherit: bool
    parent_pages: list[str | None] | None
    pages: list[str | None]
    last_index: int
    position: int  # the caller's cursor: everything it fed before this point is durable
    allocated: int
    stats: VolumeStats
    metadata: VolumeMetadata = Field(default_factory=VolumeMetadata)
    # `allocated` when the writer started (the parent's count, or 0): what a stream of a volume
    # read by several changed is `allocated - allocated_base` (imagebackup.merge_streams)
    allocated_base: int = 0


def checkpoint_name(key: str) -> str:
    return f"checkpoints/{crypto.content_hash(key.encode()).hex()}"


class BackupWriter:
    """Accepts (block_index, bytes) for one volume and builds its block map.

    Block indexes must be strictly increasing. Blocks not given keep the parent's content when
    `inherit` is true (an incremental from a changed-block list) and are zero otherwise (a full
    backup of the allocated extents). A short last block is padded with zeros; the restore
    truncates to `size`.
    """

    def __init__(
        self,
        repo: Repository,
        *,
        name: str,
        size: int,
        parent: VolumeRecord | None = None,
        inherit: bool = True,
        device: str | None = None,
        checkpoint_key: str | None = None,
        workers: int = DEFAULT_WORKERS,
        metadata: VolumeMetadata | None = None,
        _resume: Checkpoint | None = None,
    ) -> None:
        self.repo = repo
        self.name = name
        self.device = device
        self.size = size
        self.n_blocks = blocks_for(size)
        self.n_pages = pages_for(size)
        self.checkpoint_key = checkpoint_key
        self.metadata = metadata or VolumeMetadata()
        self.index = repo.load_index()
        self.codec = BlobCodec(repo.data_key, repo.config.compression_level)
        self.pack_size = repo.config.pack_size
        # What a written all-zero block is recorded as: its own marker from format version 2,
        # a hole in a version 1 repository (whose readers know no marker).
        self.zero_id = WRITTEN_ZERO_ID if repo.marks_written_zeros else ZERO_ID
        self._t0 = time.monotonic()

        self.pages: dict[int, bytearray] = {}  # loaded page buffers
        self.dirty: set[int] = set()
        # Non-zero blocks go to the encoders in order as (seq, block index, future); the worker
        # computes the blob id and encodes unless it is a known duplicate. Results are taken
        # back in order (`_resolve_one`), where dedup is decided and the map entry set, so
        # blobs are packed in block order and the first occurrence of a new blob is the one kept.
        self.encoding: collections.deque[tuple[int, int, Future[Encoded]]] = collections.deque()
        self.fed = 0  # non-zero blocks handed to the encoders (the next seq)
        self.resolved = 0  # of those, blocks whose result has been taken back
        # pages fed completely, waiting for their blocks to be resolved: (page, blocks fed)
        self.feeding: collections.deque[tuple[int, int]] = collections.deque()
        # finished dirty pages waiting for their blobs to be indexed: (page, blobs packed)
        self.finished: collections.deque[tuple[int, int]] = collections.deque()
        self.session_ids: set[bytes] = set()  # new blobs packed by this writer
        # blob id -> lowest seq encoding it, among blocks not yet resolved: a later duplicate
        # in flight skips encoding (the claimer's blob is packed first)
        self.claims: dict[bytes, int] = {}
        self.claims_lock = threading.Lock()
        self.packed = 0  # new blobs added to packs
        self.indexed = 0  # of those, blobs whose packs are durable and indexed
        self.uploads: collections.deque[Future[IndexPack]] = collections.deque()
        self.unindexed: list[IndexPack] = []
        self.builder = PackBuilder()
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="encode")
        self.upload_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="upload")
        self.closed = False

        if _resume is not None:
            cp = _resume
            self.inherit = cp.inherit
            self.parent_pages = cp.parent_pages
            self.root: list[str | None] = list(cp.pages)
            self.last_index = cp.last_index
            self.position = cp.position
            self.allocated = cp.allocated
            self.allocated_base = cp.allocated_base
            self.stats = cp.stats
            return

        self.inherit = inherit and parent is not None
        self.parent_pages = list(parent.pages) if parent is not None else None
        self.last_index = -1
        self.position = 0
        self.stats = VolumeStats(blocks_total=self.n_blocks)
        if parent is not None and parent.block_size != EBS_BLOCK_SIZE:
            raise UserError("parent restore point uses an unsupported block size")
        if self.inherit and parent is not None:
            base = list(parent.pages[: self.n_pages])
            base += [None] * (self.n_pages - len(base))
            self.root = base
            self.allocated = parent.stats.blocks_allocated
            if parent.size > size:
                self._truncate_tail()
        else:
            self.root = [None] * self.n_pages
            self.allocated = 0
        self.allocated_base = self.allocated

    @classmethod
    def resume(
        cls, repo: Repository, checkpoint_key: str, workers: int = DEFAULT_WORKERS
    ) -> BackupWriter:
        """Continue from the last checkpoint(); `writer.position` is where to go on from."""
        from ec2backup.repository.backend import ObjectMissing

        name = checkpoint_name(checkpoint_key)
        try:
            cp = Checkpoint.model_validate_json(repo.load_named(name))
        except ObjectMissing as exc:
            raise UserError(f"no checkpoint {checkpoint_key!r} in the repository") from exc
        return cls(
            repo,
            name=cp.name,
            size=cp.size,
            device=cp.device,
            checkpoint_key=checkpoint_key,
            workers=workers,
            metadata=cp.metadata,
            _resume=cp,
        )

    # ---- the map ---------------------------------------------------------------------------

    def _page(self, p: int) -> bytearray:
        buf = self.pages.get(p)
        if buf is None:
            pid = self.root[p]
            buf = bytearray(self.repo.load_page(pid)) if pid else bytearray(ZERO_PAGE)
            self.pages[p] = buf
        return buf

    def _set(self, block: int, bid: bytes) -> None:
        p, slot = divmod(block, PAGE_BLOCKS)
        buf = self._page(p)
        lo = slot * ID_SIZE
        old = buf[lo : lo + ID_SIZE]
        if old != bid:
            buf[lo : lo + ID_SIZE] = bid
            self.allocated += (bid != ZERO_ID) - (old != ZERO_ID)
            self.dirty.add(p)

    def _truncate_tail(self) -> None:
        """Parent was larger: drop entries past the new end of the last page."""
        if self.n_pages > 0 and self.root[self.n_pages - 1] is not None:
            p = self.n_pages - 1
            for slot in range(self.n_blocks - p * PAGE_BLOCKS, PAGE_BLOCKS):
                self._set(p * PAGE_BLOCKS + slot, ZERO_ID)
        # whole pages past the end went with the root: recount instead of tracking them (rare)
        self.allocated = sum(self._count(i) for i in range(self.n_pages))

    def _count(self, p: int) -> int:
        if self.root[p] is None and p not in self.pages:
            return 0
        buf = self._page(p)
        return sum(1 for s in range(PAGE_BLOCKS) if buf[s * ID_SIZE : (s + 1) * ID_SIZE] != ZERO_ID)

    # ---- feeding blocks --------------------------------------------------------------------

    def add(self, block_index: int, data: bytes | memoryview | None) -> None:
        """One block (<= 512 KiB; only the last block of the volume may be short), or None
        for a block that is not written in the source (a hole: e.g. a changed-block entry
        that only the parent snapshot has)."""
        if block_index <= self.last_index:
            raise ValueError(f"block {block_index} not after {self.last_index}")
        if block_index >= self.n_blocks:
            raise ValueError(f"block {block_index} beyond volume end ({self.n_blocks} blocks)")
        if data is not None and len(data) != EBS_BLOCK_SIZE:
            if len(data) > EBS_BLOCK_SIZE:
                raise ValueError("block larger than 512 KiB")
            data = bytes(data) + bytes(EBS_BLOCK_SIZE - len(data))
        prev_page = self.last_index // PAGE_BLOCKS if self.last_index >= 0 else -1
        self.last_index = block_index
        self.stats.blocks_listed += 1
        self.position = block_index + 1
        page = block_index // PAGE_BLOCKS
        if prev_page >= 0 and page != prev_page:
            self.feeding.append((prev_page, self.fed))
            self._advance_pages()
        if data is None:
            self._set(block_index, ZERO_ID)
            return
        self.stats.blocks_read += 1
        self.stats.bytes_read += len(data)
        if data == ZERO_BLOCK:  # memcmp at ~50 GB/s; exits at the first non-zero byte
            self._set(block_index, self.zero_id)
            return
        seq = self.fed
        self.fed += 1
        self.encoding.append((seq, block_index, self.pool.submit(self._hash_encode, seq, data)))
        if len(self.encoding) > MAX_INFLIGHT_BLOCKS:
            self._resolve_one()

    def _hash_encode(self, seq: int, data: bytes | memoryview) -> Encoded:
        """On an encoder thread: (blob id, ciphertext or None for a known duplicate, comp)."""
        bid = crypto.keyed_hash(self.repo.id_key, data)
        # reads of structures the caller thread grows (a stale miss only costs an encode)
        if bid in self.index.blobs or bid in self.session_ids:
            return bid, None, 0
        with self.claims_lock:
            first = self.claims.get(bid)
            if first is not None and first < seq:
                return bid, None, 0  # an earlier block in flight encodes this blob
            self.claims[bid] = seq
        ct, comp = self.codec.encode(bid, data)
        return bid, ct, comp

    def _resolve_one(self) -> None:
        """Take back the oldest block's result: dedup, pack the blob if new, set the map."""
        seq, block_index, fut = self.encoding.popleft()
        bid, ct, comp = fut.result()
        if bid not in self.index.blobs and bid not in self.session_ids:
            if ct is None:  # cannot happen: a skipped duplicate's claimer was resolved first
                raise RuntimeError(f"blob of block {block_index} was not encoded")
            self.session_ids.add(bid)
            self.builder.add(bid, ct, comp, EBS_BLOCK_SIZE)
            self.packed += 1
            self.stats.blocks_new += 1
            self.stats.bytes_new_raw += EBS_BLOCK_SIZE
            self.stats.bytes_new_stored += len(ct)
            if comp == COMPRESSION_NONE:
                self.stats.blocks_incompressible += 1
        if ct is not None:
            with self.claims_lock:
                if self.claims.get(bid) == seq:
                    del self.claims[bid]
        self._set(block_index, bid)
        self.resolved += 1
        if len(self.builder) >= self.pack_size:
            self._seal_pack()
        self._advance_pages()

    def _advance_pages(self) -> None:
        """Pages whose blocks are all resolved: queue dirty ones for writing, drop clean ones."""
        while self.feeding and self.feeding[0][1] <= self.resolved:
            p, _ = self.feeding.popleft()
            if p in self.dirty:
                self.finished.append((p, self.packed))
            else:
                self.pages.pop(p, None)  # unchanged: the root already names it

    def _seal_pack(self) -> None:
        if not self.builder.entries:
            return
        chunks, entries = self.builder.seal(self.repo.meta)
        size = self.builder.size
        self.builder = PackBuilder()
        while len(self.uploads) >= MAX_INFLIGHT_UPLOADS:
            self._reap_upload()
        self.uploads.append(self.upload_pool.submit(self._upload, chunks, size, entries))

    def _upload(self, chunks: list[bytes], size: int, entries: list[PackEntry]) -> IndexPack:
        """On the upload thread: name the pack by its hash and store it."""
        pid = hash_pack(chunks)
        self.repo.backend.create(data_name(pid), chunks)  # content-named
        return index_pack(pid, size, entries)

    def _reap_upload(self) -> None:
        ipack = self.uploads.popleft().result()
        self.unindexed.append(ipack)
        if len(self.unindexed) >= INDEX_EVERY_PACKS:
            self._write_index()

    def _write_index(self) -> None:
        if self.unindexed:
            self.repo.save_index(self.unindexed)
            self.indexed += sum(len(p.blobs) for p in self.unindexed)
            self.unindexed = []
        # pages whose blobs are now all durable and indexed can go out (and leave memory)
        while self.finished and self.finished[0][1] <= self.indexed:
            p, _ = self.finished.popleft()
            self._write_page(p)
            self.pages.pop(p, None)

    def _write_page(self, p: int) -> None:
        buf = self.pages[p]
        if p not in self.dirty:
            return
        self.dirty.discard(p)
        if buf == ZERO_PAGE:
            self.root[p] = None
            return
        # equal pages seal to equal objects (deterministic nonce): a page equal to the parent's
        # (or to any stored page) gets that page's id back and nothing is written
        self.root[p], written = self.repo.save_page(buf)
        self.stats.pages_written += written

    def _drain(self) -> None:
        """Make everything fed so far durable: encode, pack, upload, index, write pages."""
        while self.encoding:
            self._resolve_one()
        self._seal_pack()
        while self.uploads:
            self._reap_upload()
        self._write_index()
        assert self.indexed == self.packed and not self.feeding
        for p in sorted(self.dirty):
            self._write_page(p)

    # ---- durability points -----------------------------------------------------------------

    def checkpoint(self, position: int | None = None) -> int:
        """Flush and persist resumable state; returns the durable cursor.

        `position` is the caller's own cursor (e.g. an offset in its block list); it defaults
        to one past the last block fed. After this returns, `resume()` continues from it.
        """
        if position is not None:
            self.position = position
        self._drain()
        self._count_time()  # time spent before a resume counts too
        if self.checkpoint_key is not None:
            cp = Checkpoint(
                key=self.checkpoint_key,
                name=self.name,
                device=self.device,
                size=self.size,
                inherit=self.inherit,
                parent_pages=self.parent_pages,
                pages=self.root,
                last_index=self.last_index,
                position=self.position,
                allocated=self.allocated,
                stats=self.stats,
                metadata=self.metadata,
                allocated_base=self.allocated_base,
            )
            # a checkpoint names pages and blobs: if our lock is gone, a prune may have
            # removed some of them, so resuming from it must not be possible
            self.repo.check_locks()
            self.repo.save_named(
                checkpoint_name(self.checkpoint_key), cp.model_dump_json().encode()
            )
        return self.position

    def _count_time(self) -> None:
        now = time.monotonic()
        self.stats.seconds += now - self._t0
        self._t0 = now

    def finish(self) -> VolumeRecord:
        """Everything durable; the volume record to put into a restore point."""
        self._drain()
        self.close()
        self.stats.blocks_allocated = self.allocated
        self._count_time()
        return VolumeRecord(
            name=self.name,
            device=self.device,
            size=self.size,
            pages=list(self.root),
            stats=self.stats,
            metadata=self.metadata,
        )

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for _seq, _block, fut in self.encoding:
            fut.cancel()
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.upload_pool.shutdown(wait=True, cancel_futures=True)

    abort = close


def commit_restore_point(
    repo: Repository,
    volumes: list[VolumeRecord],
    *,
    parent: str | None = None,
    source: RestorePointSource | dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
    checkpoint_keys: Iterable[str] = (),
    when: dt.datetime | None = None,
    anomaly: AnomalySignal | None = None,
    keep_days: int | None = None,
) -> str:
    """Write the restore point (last: it must only name durable objects); drop checkpoints.
    On an Object Lock repository, then lock everything it needs until its horizon (kept
    `keep_days`, default the repository's, plus the margin)."""
    from ec2backup.repository import objectlock

    vols = [v.model_copy(update={"index": i}) for i, v in enumerate(volumes)]
    rp = RestorePoint(
        parent=parent,
        source=RestorePointSource.model_validate(source or {}),
        tags=tags or {},
        volumes=vols,
        anomaly=anomaly,
    )
    if when is not None:  # the session's nominal time (default: now)
        rp.time = when
    if objectlock.enabled(repo):
        rp.lock_until = objectlock.horizon(repo, rp.time, keep_days)
    rp_id = repo.save_restore_point(rp)
    if rp.lock_until is not None:
        objectlock.lock_restore_point(repo, rp_id, rp)
    for key in checkpoint_keys:
        repo.backend.delete(checkpoint_name(key))
    return rp_id


def merge_volume_parts(repo: Repository, parts: list[tuple[range, VolumeRecord]]) -> VolumeRecord:
    """One volume record from writers that each covered a page-aligned block range.

    Lets several workers back up one volume in parallel: each runs a BackupWriter (same size,
    same parent) fed only the blocks of its range, whose bounds must be multiples of
    PAGE_BLOCKS (the last may end at the volume end). Pages are taken from the part owning them.
    """
    if not parts:
        raise ValueError("no parts")
    first = parts[0][1]
    root: list[str | None] = list(first.pages)
    stats = VolumeStats(blocks_total=first.stats.blocks_total)
    for blocks, vol in parts:
        if vol.size != first.size:
            raise ValueError("parts of one volume must have the same size")
        if blocks.start % PAGE_BLOCKS or (
            blocks.stop % PAGE_BLOCKS and blocks.stop < blocks_for(vol.size)
        ):
            raise ValueError(f"range {blocks} is not aligned to {PAGE_BLOCKS}-block pages")
        for p in range(blocks.start // PAGE_BLOCKS, -(-blocks.stop // PAGE_BLOCKS)):
            root[p] = vol.pages[p]
        for field in SUMMED_STATS:
            setattr(stats, field, getattr(stats, field) + getattr(vol.stats, field))
        stats.seconds = max(stats.seconds, vol.stats.seconds)
    allocated = 0
    for pid in root:
        if pid is not None:
            page = repo.load_page(pid)
            allocated += sum(
                1 for s in range(PAGE_BLOCKS) if page[s * ID_SIZE : (s + 1) * ID_SIZE] != ZERO_ID
            )
    stats.blocks_allocated = allocated
    return first.model_copy(update={"pages": root, "stats": stats})

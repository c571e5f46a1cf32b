"""Repository-level archive operations: open or create an archive repository, copy a restore
point into it (self-contained, checkpointed), verify it structurally, retrieve its packs."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ec2backup.errors import UserError
from ec2backup.repository.backend import (
    ARCHIVE_CLASSES,
    ObjectMissing,
    S3Backend,
)
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE, ZERO_BLOCK
from ec2backup.repository.pack import BlobCodec
from ec2backup.repository.reader import Run, ZeroRun, _fetch_run, plan_runs
from ec2backup.repository.repo import Repository, RepositoryExists, data_name
from ec2backup.repository.restorepoint import VolumeRecord
from ec2backup.repository.writer import BackupWriter, checkpoint_name, commit_restore_point

# 128 MiB packs: 8x fewer objects than the hot repository's 16 MiB (Glacier charges ~40 KiB of
# overhead and a request per object) while a copy holds at most two packs in memory.
ARCHIVE_PACK_SIZE = 128 * 1024 * 1024

STORAGE_CLASSES = ("GLACIER", "DEEP_ARCHIVE")

# Retrieval tiers RestoreObject accepts for both classes (Expedited is GLACIER-only and costly).
RETRIEVAL_TIERS = ("Standard", "Bulk")

# How long a retrieved copy stays readable: long enough for a slow restore to finish.
RETRIEVED_COPY_DAYS = 7

# us-east-1 storage prices (USD per GB-month) used to estimate early-deletion charges.
PRICE_PER_GB_MONTH = {"GLACIER": 0.0036, "DEEP_ARCHIVE": 0.00099}

# A copy checkpoints (packs sealed and indexed, map saved) every pack's worth of blocks, or
# every minute: a lost worker costs at most that much work, and packs stay near full size.
ARCHIVE_CHECKPOINT_BLOCKS = ARCHIVE_PACK_SIZE // EBS_BLOCK_SIZE

ARCHIVE_CHECKPOINT_SECONDS = 60.0

# Runs of blobs fetched from the hot repository ahead of the archive writer.
COPY_READ_AHEAD = 4

GIB = 1024**3


class ArchiveError(UserError):
    pass


# An init that lost the race sees the winner's key files before its config (written last).
CREATED_ELSEWHERE_WAIT_SECONDS = 30.0


def _open_when_created(url: str, password: bytes) -> Repository:
    from ec2backup.errors import NotFoundError

    deadline = time.monotonic() + CREATED_ELSEWHERE_WAIT_SECONDS
    while True:
        try:
            return Repository.open(url, password)
        except NotFoundError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def open_or_create(url: str, password: bytes, storage_class: str | None) -> Repository:
    """The archive repository at `url`; created (with `storage_class`, large packs) if absent."""
    from ec2backup.errors import NotFoundError

    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise ArchiveError(
            f"--storage-class: {storage_class} is not one of {', '.join(STORAGE_CLASSES)}"
        )
    try:
        repo = Repository.open(url, password)
    except NotFoundError:
        try:
            return Repository.create(
                url,
                password,
                pack_size=ARCHIVE_PACK_SIZE,
                data_storage_class=storage_class or "GLACIER",
            )
        except RepositoryExists:  # a parallel run is creating it: use that one
            repo = _open_when_created(url, password)
    have = repo.config.data_storage_class
    if have not in ARCHIVE_CLASSES:
        raise ArchiveError(f"{url} is not an archive repository (its packs are STANDARD)")
    if storage_class is not None and storage_class != have:
        raise ArchiveError(
            f"--storage-class: the archive repository at {url} stores packs in {have}, "
            f"not {storage_class}"
        )
    return repo


def find_archived(archive: Repository, hot_repository_id: str, restore_point_id: str) -> str | None:
    for rid, rp in archive.list_restore_points():
        if (
            rp.tags.get("archived_from") == restore_point_id
            and rp.source.hot_repository_id == hot_repository_id
        ):
            return rid
    return None


@dataclass
class CopyResult:
    restore_point_id: str
    already_archived: bool
    bytes_copied: int = 0
    blocks_copied: int = 0
    blocks_resumed: int = 0  # blocks an earlier, interrupted attempt had made durable


def _blocks_of(hot: Repository, volume: VolumeRecord, start: int = 0) -> Any:
    """(block index, plaintext) of every written block (zeros too) from `start` on, in block order,
    reading ahead (runs wholly before `start` are not fetched)."""
    codec = BlobCodec(hot.data_key, hot.config.compression_level)

    def fetch(run: Any) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []

        def keep(offset: int, data: bytes | memoryview) -> None:
            out.append((offset // EBS_BLOCK_SIZE, bytes(data)))

        _fetch_run(hot, codec, run, volume.size, keep)
        return out

    def zeros(run: ZeroRun) -> list[tuple[int, bytes]]:
        return [(i, ZERO_BLOCK) for i in range(run.start, run.start + run.count) if i >= start]

    pending: deque[Future[list[tuple[int, bytes]]]] = deque()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="archive-read") as pool:
        for run in plan_runs(hot, volume, zeros=True):
            if isinstance(run, ZeroRun):  # written zero blocks stay written zero blocks
                if run.start + run.count > start:
                    pending.append(pool.submit(zeros, run))
                continue
            if run.items[-1][0] < start:
                continue
            pending.append(pool.submit(fetch, run))
            while len(pending) > COPY_READ_AHEAD:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()


def _open_writer(archive: Repository, volume: VolumeRecord, key: str | None) -> BackupWriter:
    """The volume's writer: resumed from its checkpoint if an earlier attempt left one."""
    if key is not None and archive.backend.exists(checkpoint_name(key)):
        return BackupWriter.resume(archive, key)
    return BackupWriter(
        archive,
        name=volume.name,
        size=volume.size,
        device=volume.device,
        inherit=False,
        metadata=volume.metadata.model_copy(),
        checkpoint_key=key,
    )


def copy_restore_point(
    hot: Repository,
    restore_point_id: str,
    archive: Repository,
    progress: Callable[[int], None] = lambda _n: None,
    checkpoint_prefix: str | None = None,
) -> CopyResult:
    """Copy one restore point into the archive (idempotent: an archived one is found).

    With `checkpoint_prefix` (the Archive workflow's id) each volume's writer checkpoints every
    ARCHIVE_CHECKPOINT_BLOCKS, so a copy that a lost worker interrupted resumes where the last
    checkpoint left it instead of starting over."""
    rid, rp = hot.load_restore_point(restore_point_id)
    existing = find_archived(archive, hot.config.id, rid)
    if existing is not None:
        return CopyResult(existing, already_archived=True)
    result = CopyResult("", already_archived=False)
    keys = [
        f"{checkpoint_prefix}/{i}" if checkpoint_prefix else None for i in range(len(rp.volumes))
    ]
    # Shared locks on both: a prune of the hot repository must not delete packs being read,
    # nor a prune of the archive the packs being written.
    with (
        hot.lock(exclusive=False, purpose=f"archive {rid[:12]} (source)", wait=600),
        archive.lock(exclusive=False, purpose=f"archive {rid[:12]}", wait=600),
    ):
        records: list[VolumeRecord] = []
        for volume, key in zip(rp.volumes, keys, strict=True):
            writer = _open_writer(archive, volume, key)
            start = writer.position
            result.blocks_resumed += writer.stats.blocks_read
            try:
                since_checkpoint, checkpointed_at = 0, time.monotonic()
                for block, data in _blocks_of(hot, volume, start):
                    if block < start:
                        continue
                    writer.add(block, data)
                    result.blocks_copied += 1
                    result.bytes_copied += len(data)
                    progress(len(data))
                    since_checkpoint += 1
                    if key is not None and (
                        since_checkpoint >= ARCHIVE_CHECKPOINT_BLOCKS
                        or time.monotonic() - checkpointed_at > ARCHIVE_CHECKPOINT_SECONDS
                    ):
                        writer.checkpoint(position=block + 1)
                        since_checkpoint, checkpointed_at = 0, time.monotonic()
                if key is not None:
                    writer.checkpoint(position=volume.size // EBS_BLOCK_SIZE + 1)
                record = writer.finish()
            finally:
                writer.close()
            records.append(record)
        result.restore_point_id = commit_restore_point(
            archive,
            records,
            source=rp.source.model_copy(
                update={"archived_from": rid, "hot_repository_id": hot.config.id}
            ),
            tags={**rp.tags, "archived_from": rid},
            checkpoint_keys=[k for k in keys if k is not None],
            when=rp.time,
        )
    return result


@dataclass
class VerifyResult:
    packs: int = 0
    pack_bytes: int = 0
    metadata_objects: int = 0
    logical_bytes: int = 0
    allocated_bytes: int = 0
    storage_classes: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def objects_per_gib(self) -> float:
        """Objects (packs + map pages + the restore point) per GiB of archived data."""
        gib = max(self.allocated_bytes, 1) / GIB
        return (self.packs + self.metadata_objects) / gib


def packs_of(repo: Repository, volumes: list[VolumeRecord]) -> dict[str, int]:
    """Pack id -> indexed size, for every pack the volumes' blocks live in."""
    from ec2backup.repository.repo import CorruptObjectError

    repo.load_index(refresh=True)
    packs: dict[str, int] = {}
    try:
        for volume in volumes:
            for run in plan_runs(repo, volume):
                assert isinstance(run, Run)  # without zeros=True only blob runs come
                packs[run.pack_id] = repo.pack_size(run.pack_id)
    except CorruptObjectError as exc:
        raise ArchiveError(str(exc)) from exc
    return packs


def verify(archive: Repository, restore_point_id: str) -> VerifyResult:
    """Structural check of an archived restore point (no pack is read: see the module doc)."""
    _rid, rp = archive.load_restore_point(restore_point_id)
    out = VerifyResult()
    try:
        packs = packs_of(archive, rp.volumes)
    except ArchiveError as exc:
        out.problems.append(str(exc))
        return out
    backend = archive.backend
    wanted = archive.config.data_storage_class
    for pid, size in sorted(packs.items()):
        name = data_name(pid)
        try:
            state = backend.object_state(name) if isinstance(backend, S3Backend) else None
        except ObjectMissing:
            out.problems.append(f"{name} is missing")
            continue
        out.packs += 1
        out.pack_bytes += size
        if state is None:
            continue
        out.storage_classes[state.storage_class] = (
            out.storage_classes.get(state.storage_class, 0) + 1
        )
        if state.size != size:
            out.problems.append(f"{name} has {state.size} bytes, the index says {size}")
        if wanted and state.storage_class != wanted:
            out.problems.append(f"{name} is {state.storage_class}, not {wanted}")
    out.metadata_objects = 1 + sum(1 for v in rp.volumes for p in v.pages if p is not None)
    out.logical_bytes = sum(v.size for v in rp.volumes)
    out.allocated_bytes = sum(v.stats.blocks_allocated * v.block_size for v in rp.volumes)
    return out


# ---- retrieval ----------------------------------------------------------------------------------
@dataclass
class RetrievalState:
    packs: int = 0
    readable: int = 0
    in_progress: int = 0
    archived: int = 0
    requested: int = 0

    @property
    def ready(self) -> bool:
        return self.readable == self.packs


def retrieval(
    archive: Repository,
    restore_point_id: str,
    request: bool,
    tier: str = "Standard",
    days: int = RETRIEVED_COPY_DAYS,
) -> RetrievalState:
    """Where the restore point's packs stand; with `request`, RestoreObject the archived ones."""
    if tier not in RETRIEVAL_TIERS:
        raise ArchiveError(f"--retrieval-tier: {tier} is not one of {', '.join(RETRIEVAL_TIERS)}")
    backend = archive.backend
    if not isinstance(backend, S3Backend):
        raise ArchiveError(f"{backend.location()} is not an S3 archive repository")
    _rid, rp = archive.load_restore_point(restore_point_id)
    state = RetrievalState()
    for pid in sorted(packs_of(archive, rp.volumes)):
        name = data_name(pid)
        s = backend.object_state(name)
        state.packs += 1
        if s.retrieval == "readable":
            state.readable += 1
        elif s.retrieval == "in-progress":
            state.in_progress += 1
        else:
            state.archived += 1
            if request:
                backend.request_retrieval(name, days, tier)
                state.requested += 1
    return state

"""Move one range of one volume's blocks from the attached device into the repository.

Which blocks: `ListChangedBlocks(parent snapshot, snapshot)` when the plan has a usable CBT
base, else `ListSnapshotBlocks(snapshot)` (only written blocks). Blocks are read as the plan
chose (`VolumePlan.read`): from the worker's copy of the volume (the attached device) or with
EBS direct `GetSnapshotBlock`, several in flight either way (`with_data`), and fed to the
repository's `BackupWriter` in increasing order. A volume read by several streams at once
(`VolumePlan.spans`) has one writer and checkpoint per stream, each confined to its span of
whole map pages; the commit merges them (`ec2backup.imagebackup.merge_streams`). The writer's
checkpoint in the repository (`checkpoint_key(session, volume or stream)`) is the durable
cursor: a retried, resumed or re-provisioned range continues from it, so a lost host re-reads
at most one checkpoint interval.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from ec2backup import aws
from ec2backup.budget import RateLimiter
from ec2backup.ebs import LIST_PAGE_SIZE, BlockRef, get_block, no_pace
from ec2backup.imagebackup import checkpoint_key
from ec2backup.models.session import TransferRangeInput, TransferRangeOutput, VolumePlan
from ec2backup.repository.backend import ObjectMissing
from ec2backup.repository.repair import recover_unindexed_packs
from ec2backup.repository.repo import Repository
from ec2backup.repository.restorepoint import VolumeMetadata
from ec2backup.repository.writer import BackupWriter, Checkpoint, checkpoint_name
from ec2backup.workers import read_session_secret, secret_password
from worker_agent.devices import DeviceReader
from worker_agent.repositories import open_repository

# Make progress durable (checkpoint + heartbeat) at least this often: bounds what a lost host
# re-reads (256 blocks = 128 MiB) and how stale the cursor in the workflow can be.
CHECKPOINT_EVERY_BLOCKS = 256
CHECKPOINT_EVERY_SECONDS = 10.0
# Heartbeat (the last durable cursor) more often than the shortest heartbeat timeout, so a
# live host is never taken for dead and a cancel or pause is noticed within about a second.
HEARTBEAT_EVERY_SECONDS = 1.0
EBS_LIST_MIN_RESULTS = 100
# GetSnapshotBlock calls in flight for an EBS direct read: about 30 ms-100 ms each, so 32 reach
# the few hundred blocks/s a session may take of the account's 1,000/s (ec2backup.readplan).
EBS_DIRECT_IN_FLIGHT = 32
# Device reads in flight for an attached volume copy. A volume created from a snapshot loads
# each block from S3 on its first read, so one read at a time leaves the volume idle while this
# thread hands the block to the encoders: AWS's own initialization recipe reads with a queue
# depth of 32 x 1 MiB (`fio --iodepth=32`, "Initialize Amazon EBS volumes"); 16 x 512 KiB is the
# same bytes in flight, and the read-ahead window (twice that) holds 16 MiB.
ATTACHED_READ_AHEAD = 16


# One list-call pacer per stream of a session, kept by the agent from one range to the next:
# a range's first list call then waits only if the stream's previous call was less than a
# share's interval ago (a fresh pacer would make every range wait a whole interval first).
_list_pacers: dict[tuple[str, str], RateLimiter] = {}
_list_pacers_lock = threading.Lock()


def list_pacer(session_id: str, stream: str, rps: float) -> RateLimiter:
    with _list_pacers_lock:
        pacer = _list_pacers.get((session_id, stream))
        if pacer is None:
            pacer = _list_pacers[(session_id, stream)] = RateLimiter(rps)
        else:
            pacer.set_rate(rps)  # this round's share
        return pacer


@dataclass
class Progress:
    cursor: int
    blocks_listed: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0


def changed_blocks(
    ebs: Any,
    volume: VolumePlan,
    start: int,
    end: int,
    pace: Callable[[], None] = no_pace,
) -> Iterator[tuple[int, bool | None, str | None]]:
    """(block index, present in the new snapshot, its block token) for blocks to (re)write in
    [start, end), then `(first index >= end, None, None)` if the list goes on: empty ranges can
    be skipped. `pace` is called before each page (the range's part of the list budget)."""
    if volume.parent_snapshot_id:
        kwargs: dict[str, Any] = {
            "FirstSnapshotId": volume.parent_snapshot_id,
            "SecondSnapshotId": volume.snapshot_id,
        }
        key, present = "ChangedBlocks", "SecondBlockToken"
        call = ebs.list_changed_blocks
    else:
        kwargs = {"SnapshotId": volume.snapshot_id}
        key, present = "Blocks", "BlockToken"
        call = ebs.list_snapshot_blocks
    kwargs.update(
        MaxResults=max(EBS_LIST_MIN_RESULTS, min(LIST_PAGE_SIZE, end - start)),
        StartingBlockIndex=start,
    )
    while True:
        pace()
        page = call(**kwargs)
        for block in page.get(key, []):
            index = block["BlockIndex"]
            if index >= end:
                yield index, None, None
                return
            if index >= start:
                yield index, present in block, block.get(present)
        token = page.get("NextToken")
        if not token:
            return
        kwargs.pop("StartingBlockIndex", None)
        kwargs["NextToken"] = token


def with_data(
    listed: Iterator[tuple[int, bool | None, str | None]],
    read: Callable[[int, str | None], bytes],
    in_flight: int,
) -> Generator[tuple[int, bool | None, bytes | None]]:
    """The listed blocks with their data, in list order, reading up to `in_flight` ahead in a
    thread pool (EBS direct: each GetSnapshotBlock waits on the network, one at a time would
    read a few MiB/s; an attached copy: its first reads wait on S3). in_flight 1: read in this
    thread."""
    if in_flight <= 1:
        for index, present, token in listed:
            yield index, present, read(index, token) if present else None
        return
    window: collections.deque[tuple[int, bool | None, Future[bytes] | None]] = collections.deque()
    with ThreadPoolExecutor(in_flight, thread_name_prefix="get-block") as pool:
        try:
            for index, present, token in listed:
                fut = pool.submit(read, index, token) if present else None
                window.append((index, present, fut))
                while len(window) > in_flight * 2:
                    i, p, f = window.popleft()
                    yield i, p, f.result() if f is not None else None
            while window:
                i, p, f = window.popleft()
                yield i, p, f.result() if f is not None else None
        finally:
            for _i, _p, f in window:
                if f is not None:
                    f.cancel()


def _parent_record(repo: Repository, volume: VolumePlan) -> Any:
    if not volume.parent_restore_point_id:
        return None
    _, rp = repo.load_restore_point(volume.parent_restore_point_id)
    for record in rp.volumes:
        if record.metadata.source_volume_id == volume.source_volume_id:
            return record
    return None


def belongs(saved: Checkpoint, snapshot_id: str, size: int) -> bool:
    """A checkpoint is resumed only for the snapshot and volume size it was written for."""
    return saved.metadata.snapshot_id == snapshot_id and saved.size == size


def open_writer(repo: Repository, req: TransferRangeInput) -> BackupWriter:
    # A stream's writer owns its span's map pages only; the commit merges the streams.
    key = checkpoint_key(req.session_id, req.stream or req.volume.source_volume_id)
    size = req.volume.size_gib * 1024**3
    try:
        saved = Checkpoint.model_validate_json(repo.load_named(checkpoint_name(key)))
    except ObjectMissing:
        pass
    else:
        if not belongs(saved, req.volume.snapshot_id, size):
            # Another snapshot or size under the same key (the same session id reused, a
            # plan changed by a new attempt): its blocks are not this volume's. Start over.
            repo.backend.delete(checkpoint_name(key))
            return open_writer(repo, req)
        if saved.position > req.cursor:
            # The previous attempt got further than the workflow knows: it died after a
            # checkpoint. Adopt packs it uploaded since, instead of sending them again.
            recover_unindexed_packs(repo)
        return BackupWriter.resume(repo, key)
    parent = _parent_record(repo, req.volume)
    return BackupWriter(
        repo,
        name=req.volume.source_volume_id,
        size=size,
        parent=parent,
        inherit=bool(req.volume.parent_snapshot_id) and parent is not None,
        device=req.volume.device,
        checkpoint_key=key,
        metadata=VolumeMetadata(
            source_volume_id=req.volume.source_volume_id,
            snapshot_id=req.volume.snapshot_id,
            parent_snapshot_id=req.volume.parent_snapshot_id,
            cbt_reason=req.volume.cbt_reason,
        ),
    )


def transfer_range(
    req: TransferRangeInput,
    heartbeat: Callable[[Progress], None],
    should_stop: Callable[[], bool],
    share: Callable[[], float | None] = lambda: None,
) -> TransferRangeOutput:
    """`share` (EBS direct): the range's current GetSnapshotBlock rate, asked by its pacer
    before each call; it answers every SHARE_POLL_SECONDS (None in between)."""
    secret = read_session_secret(req.secret_name, req.secret_region)
    repo = open_repository(req.repository, secret_password(secret))
    ebs = aws.client("ebs", req.region, req.snapshot_role_arn)
    with repo.lock(exclusive=False, purpose=f"backup {req.session_id}", wait=300):
        repo.refresh_index()  # under the lock: a prune cannot change it until we are done
        writer = open_writer(repo, req)
        try:
            start = max(req.start_block, req.cursor, writer.position)
            progress = Progress(cursor=start)
            stored0 = writer.stats.bytes_new_stored
            last_cp, last_cp_time = 0, time.monotonic()
            last_beat = last_cp_time
            stopped = False
            # Where to go on after this range: the next listed block (skipping empty ranges)
            # or the end of the volume when nothing follows.
            resume_at = req.span_end if req.span_end is not None else req.volume.blocks_total
            size = req.volume.size_gib * 1024**3
            direct = req.volume.read == "ebs-direct"
            with (
                contextlib.nullcontext(None)
                if direct
                else DeviceReader(req.worker_device, req.worker_volume_id, size)
            ) as device:
                # follows the session's share as others come and go (0: others still spend
                # what this session is to get: wait for it)
                pace = (
                    RateLimiter(req.get_rps, follow=share)
                    if direct and req.get_rps is not None
                    else None
                )

                def read(index: int, token: str | None) -> bytes:
                    if device is None:  # EBS direct: the snapshot's block, checksum verified
                        assert token is not None
                        if pace is not None:  # the session's share of the account's quota
                            pace.acquire()
                        return get_block(ebs, req.volume.snapshot_id, BlockRef(index, token))
                    return device.read_block(index)

                list_pace = (
                    list_pacer(
                        req.session_id, req.stream or req.volume.source_volume_id, req.list_rps
                    ).acquire
                    if req.list_rps
                    else no_pace
                )
                listed = changed_blocks(ebs, req.volume, start, req.end_block, list_pace)
                in_flight = EBS_DIRECT_IN_FLIGHT if direct else ATTACHED_READ_AHEAD
                with contextlib.closing(with_data(listed, read, in_flight)) as blocks:
                    for index, present, data in blocks:
                        if present is None:
                            resume_at = index
                            break
                        progress.blocks_listed += 1
                        if data is not None:
                            progress.blocks_read += 1
                            progress.bytes_read += len(data)
                        # data None: only in the parent snapshot, not written in this one: a hole
                        writer.add(index, data)
                        now = time.monotonic()
                        if now - last_beat < HEARTBEAT_EVERY_SECONDS and not (
                            progress.blocks_listed - last_cp >= CHECKPOINT_EVERY_BLOCKS
                            or now - last_cp_time > CHECKPOINT_EVERY_SECONDS
                        ):
                            continue
                        stop = should_stop()
                        if stop or (
                            progress.blocks_listed - last_cp >= CHECKPOINT_EVERY_BLOCKS
                            or now - last_cp_time > CHECKPOINT_EVERY_SECONDS
                        ):
                            if device is not None:  # never commit blocks of a swapped device
                                device.verify()
                            progress.cursor = writer.checkpoint(position=index + 1)
                            progress.bytes_stored = writer.stats.bytes_new_stored - stored0
                            last_cp, last_cp_time = progress.blocks_listed, now
                        heartbeat(progress)  # only ever a durable cursor
                        last_beat = now
                        if stop:  # pause or cancel: everything before the cursor is durable
                            stopped = True
                            break
                if not stopped and device is not None:
                    device.verify()
            if not stopped:
                progress.cursor = writer.checkpoint(position=max(resume_at, req.end_block))
                progress.bytes_stored = writer.stats.bytes_new_stored - stored0
                heartbeat(progress)
        finally:
            writer.close()
    return TransferRangeOutput(
        cursor=progress.cursor,
        blocks_listed=progress.blocks_listed,
        blocks_read=progress.blocks_read,
        bytes_read=progress.bytes_read,
        bytes_stored=progress.bytes_stored,
        stopped=stopped,
    )

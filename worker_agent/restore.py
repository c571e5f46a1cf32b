"""Write one volume of a restore point onto a device attached to the restore worker.

The device is a volume created empty for this restore, so it reads as zeros wherever nothing
is written: holes are skipped, data blocks and written zero blocks are written (the snapshot
taken afterwards then lists what the source's did).

Checkpoints: every `checkpoint_mib` written (or CHECKPOINT_SECONDS) the device is fsynced and the
point below which every block is written is reported (`RestoreCheckpoint`, in heartbeats and
in a failure). A retried write of the same volume, on this worker or on a new one the volume
was re-attached to, goes on from there; blocks past the checkpoint are written again, which is
harmless: the bytes come from the repository, not from the device.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from ec2backup.models.restore import RestoreCheckpoint, WriteVolumeInput, WriteVolumeOutput
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE
from ec2backup.repository.directio import BlockWriter
from ec2backup.repository.reader import restore_volume
from ec2backup.workers import read_session_secret, secret_password
from worker_agent.devices import DeviceMismatch, find_volume
from worker_agent.repositories import open_repository

GIB = 1024**3
# How long a restore waits for a running prune (exclusive lock) before it fails.
LOCK_WAIT_SECONDS = 600.0
# A checkpoint costs an fsync of the device; a lost worker costs at most `checkpoint_mib`
# ([performance] restore_checkpoint_mib, 256 by default: at EBS's 125-1,000 MiB/s a few
# seconds) of rewriting, or this long.
MIB = 1024**2
CHECKPOINT_SECONDS = 30.0
# Decoding (AES-GCM, zstd) releases the GIL: a thread per core, at least two per volume.
MIN_THREADS = 2

Progress = Callable[[int, int, RestoreCheckpoint | None], None]


def open_device(req: WriteVolumeInput) -> tuple[int, Path]:
    """The device's fd for writing and its path, after checking it is the volume and size we
    were given."""
    path = find_volume(req.volume_id, req.worker_device)
    fd = os.open(path, os.O_WRONLY)
    size = os.lseek(fd, 0, os.SEEK_END)
    if size != req.size_gib * GIB:
        os.close(fd)
        raise DeviceMismatch(
            f"{req.device}: volume {req.volume_id} at {path} has {size} bytes, "
            f"not the {req.size_gib} GiB the restore needs"
        )
    return fd, path


class WriteFailed(Exception):
    """The write stopped; `checkpoint` is how far it durably got (None: nothing durable)."""

    def __init__(self, cause: BaseException, checkpoint: RestoreCheckpoint | None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.checkpoint = checkpoint


def write_volume(req: WriteVolumeInput, progress: Progress) -> WriteVolumeOutput:
    """Write the volume record, from `req.resume` on if it is a checkpoint of this volume;
    `progress(blocks, bytes, last checkpoint)` after each run of blocks (it may raise to stop
    the write, e.g. on cancellation). A failure after the device was opened is raised as
    `WriteFailed` with the last checkpoint."""
    secret = read_session_secret(req.secret_name, req.secret_region)
    repo = open_repository(req.repository, secret_password(secret))
    _, rp = repo.load_restore_point(req.backup_id)
    record = rp.volumes[req.record_index]
    if record.size > req.size_gib * GIB:
        raise DeviceMismatch(
            f"{req.device}: the backup's volume holds {record.size} bytes, more than "
            f"{req.size_gib} GiB"
        )
    resume = req.resume if req.resume and req.resume.volume_id == req.volume_id else None
    fd, path = open_device(req)
    # Around the page cache where the device takes it: a whole volume is written once, and
    # through the page cache the writing threads would queue on the device's lock and fill
    # the worker's memory with dirty pages (ec2backup.repository.directio).
    writer = BlockWriter(path, fd)
    counts = [resume.blocks_written, resume.bytes_written] if resume else [0, 0]
    durable: list[RestoreCheckpoint | None] = [resume]
    last = [counts[1], time.monotonic()]  # bytes and time at the last checkpoint

    def advance(nbytes: int) -> None:
        counts[0] += -(-nbytes // EBS_BLOCK_SIZE)
        counts[1] += nbytes
        progress(counts[0], counts[1], durable[0])

    def done_below(next_block: int) -> None:
        if counts[1] - last[0] < req.checkpoint_mib * MIB and time.monotonic() - last[1] < (
            CHECKPOINT_SECONDS
        ):
            return
        os.fsync(fd)  # what the checkpoint claims is on the volume, whatever happens next
        durable[0] = RestoreCheckpoint(
            volume_id=req.volume_id,
            next_block=next_block,
            blocks_written=counts[0],
            bytes_written=counts[1],
        )
        last[:] = [counts[1], time.monotonic()]

    try:
        # A shared lock for as long as packs are read: a prune cannot delete them under us.
        with repo.lock(
            exclusive=False, purpose=f"restore {req.restore_id}", wait=LOCK_WAIT_SECONDS
        ):
            repo.refresh_index()  # kept from an earlier volume: brought up to date
            restore_volume(
                repo,
                record,
                writer.write,
                progress=advance,
                write_zeros=True,
                workers=max(MIN_THREADS, os.cpu_count() or 1),
                from_block=resume.next_block if resume else 0,
                done_below=done_below,
            )
        os.fsync(fd)  # durable before the orchestrator snapshots the volume
    except Exception as exc:
        raise WriteFailed(exc, durable[0]) from exc
    finally:
        writer.close()
        os.close(fd)
    return WriteVolumeOutput(
        blocks_written=counts[0],
        bytes_written=counts[1],
        resumed_from_block=resume.next_block if resume else 0,
    )

"""Write one volume of a restore point onto a device attached to the restore worker.

The device is a volume created empty for this restore, so it reads as zeros wherever nothing
is written: holes are skipped, data blocks and written zero blocks are written (the snapshot
taken afterwards then lists what the source's did). A retried write starts over: rewriting a
block with the same bytes is harmless, and the blocks come from the repository, not the device.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from ec2backup.models.restore import WriteVolumeInput, WriteVolumeOutput
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE
from ec2backup.repository.reader import restore_volume
from ec2backup.repository.repo import Repository
from ec2backup.workers import read_session_secret, secret_password
from worker_agent.devices import DeviceMismatch, find_volume

GIB = 1024**3
# How long a restore waits for a running prune (exclusive lock) before it fails.
LOCK_WAIT_SECONDS = 600.0


def open_device(req: WriteVolumeInput) -> int:
    """The device's fd for writing, after checking it is the volume and size we were given."""
    path = find_volume(req.volume_id, req.worker_device)
    fd = os.open(path, os.O_WRONLY)
    size = os.lseek(fd, 0, os.SEEK_END)
    if size != req.size_gib * GIB:
        os.close(fd)
        raise DeviceMismatch(
            f"{req.device}: volume {req.volume_id} at {path} has {size} bytes, "
            f"not the {req.size_gib} GiB the restore needs"
        )
    return fd


def write_volume(req: WriteVolumeInput, progress: Callable[[int, int], None]) -> WriteVolumeOutput:
    """Write the volume record; `progress(blocks, bytes)` after each run of blocks (it may
    raise to stop the write, e.g. on cancellation)."""
    secret = read_session_secret(req.secret_name, req.secret_region)
    repo = Repository.open(req.repository, secret_password(secret))
    _, rp = repo.load_restore_point(req.backup_id)
    record = rp.volumes[req.record_index]
    if record.size > req.size_gib * GIB:
        raise DeviceMismatch(
            f"{req.device}: the backup's volume holds {record.size} bytes, more than "
            f"{req.size_gib} GiB"
        )
    fd = open_device(req)
    counts = [0, 0]
    try:

        def write(offset: int, data: bytes | memoryview) -> None:
            os.pwrite(fd, data, offset)

        def advance(nbytes: int) -> None:
            counts[0] += -(-nbytes // EBS_BLOCK_SIZE)
            counts[1] += nbytes
            progress(counts[0], counts[1])

        # A shared lock for as long as packs are read: a prune cannot delete them under us.
        with repo.lock(
            exclusive=False, purpose=f"restore {req.restore_id}", wait=LOCK_WAIT_SECONDS
        ):
            restore_volume(repo, record, write, progress=advance, write_zeros=True)
        os.fsync(fd)  # durable before the orchestrator snapshots the volume
    finally:
        os.close(fd)
    return WriteVolumeOutput(blocks_written=counts[0], bytes_written=counts[1])

"""Activities served by the worker agent on its host's own task queue.

They run where the devices are; the orchestrator reaches them through the task queue
`ec2backup-host-<instance-id>`. The data transfer itself arrives with the backup session.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from ec2backup import observability
from ec2backup.activity_support import Liveness, role_session
from ec2backup.budget import SHARE_POLL_SECONDS
from ec2backup.models.agent import (
    DescribeHostInput,
    DescribeHostOutput,
    DigestBlocksInput,
    DigestBlocksOutput,
    HostDevice,
)
from ec2backup.models.archive import ArchiveCopyInput, ArchiveCopyOutput
from ec2backup.models.restore import (
    RestoreCheckpoint,
    WriteVolumeInput,
    WriteVolumeOutput,
    WriteVolumeProgress,
)
from ec2backup.models.session import TransferRangeInput, TransferRangeOutput
from worker_agent.devices import DeviceReader, resolve_device, volume_id_of


@activity.defn(name="agent_describe_host")
def describe_host(req: DescribeHostInput) -> DescribeHostOutput:
    """Who this host is and which block devices it sees."""
    devices: list[HostDevice] = []
    device_dir = os.environ.get("EC2BACKUP_DEVICE_DIR")
    names = sorted(os.listdir(device_dir)) if device_dir and os.path.isdir(device_dir) else []
    for name in names:
        path = resolve_device(f"/dev/{name}")
        if not path.exists() or path.is_dir():  # the by-id/ links are not devices
            continue
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
        devices.append(
            HostDevice(device=f"/dev/{name}", volume_id=volume_id_of(path), size_bytes=size)
        )
    return DescribeHostOutput(
        instance_id=os.environ.get("EC2BACKUP_INSTANCE_ID", ""), devices=devices
    )


@activity.defn(name="agent_digest_blocks")
def digest_blocks(req: DigestBlocksInput) -> DigestBlocksOutput:
    """SHA-256 over the given blocks of a device, read in order (a device read self-test)."""
    digest = hashlib.sha256()
    total = 0
    with DeviceReader(req.device, req.volume_id) as reader:
        for index in req.block_indexes:
            data = reader.read_block(index)
            digest.update(data)
            total += len(data)
        volume_id = reader.volume_id
    return DigestBlocksOutput(volume_id=volume_id, sha256=digest.hexdigest(), bytes_read=total)


ALL: list[Callable[..., Any]] = [describe_host, digest_blocks]


# ---- the data transfer ---------------------------------------------------------------
# Set by the agent at start-up: the client and loop used to ask the session whether it is paused.
AGENT_CLIENT: Any = None
AGENT_LOOP: Any = None
# How often a running range asks its session whether it was paused.
PAUSE_POLL_SECONDS = 2.0


def _budget_share(budget_workflow_id: str, holder: str) -> float | None:
    """The session's current share of the budget (None: unknown now, keep the last one)."""
    if AGENT_CLIENT is None or AGENT_LOOP is None:
        return None
    import asyncio

    from ec2backup.models.budget import BudgetState, BudgetStateInput

    async def ask() -> float | None:
        handle = AGENT_CLIENT.get_workflow_handle(budget_workflow_id)
        state = await handle.query("state", BudgetStateInput(), result_type=BudgetState)
        return state.shares.get(holder)

    try:
        return asyncio.run_coroutine_threadsafe(ask(), AGENT_LOOP).result(timeout=10)
    except Exception:  # the budget may be moving (continue-as-new): keep the last share
        return None


def _session_paused(workflow_id: str) -> bool:
    if AGENT_CLIENT is None or AGENT_LOOP is None:
        return False
    import asyncio

    from ec2backup.models.session import ProgressInput, SessionProgress

    async def ask() -> bool:
        handle = AGENT_CLIENT.get_workflow_handle(workflow_id)
        progress = await handle.query("progress", ProgressInput(), result_type=SessionProgress)
        return bool(progress.paused)

    try:
        return asyncio.run_coroutine_threadsafe(ask(), AGENT_LOOP).result(timeout=10)
    except Exception:  # the orchestrator may be restarting: keep going, ask again later
        return False


@activity.defn(name="agent_transfer_range")
def transfer_range(req: TransferRangeInput) -> TransferRangeOutput:
    """One range of one volume into the repository; heartbeats a durable cursor; stops early
    (returning `stopped`) when its session is paused, raises when it is cancelled."""
    import time

    from ec2backup.activity_support import classify
    from worker_agent import transfer

    workflow_id = activity.info().workflow_id or ""
    last_poll = [time.monotonic()]
    liveness = Liveness(activity.heartbeat)

    def heartbeat(progress: transfer.Progress) -> None:
        liveness.heartbeat({"cursor": progress.cursor, "blocks_read": progress.blocks_read})

    def should_stop() -> bool:
        if activity.is_cancelled():
            return True
        if time.monotonic() - last_poll[0] < PAUSE_POLL_SECONDS:
            return False
        last_poll[0] = time.monotonic()
        return _session_paused(workflow_id)

    last_share = [time.monotonic()]
    share_lock = threading.Lock()  # the range's reading threads ask too while they wait

    def share() -> float | None:
        """This range's part of its session's share, when it is time to ask again."""
        with share_lock:
            # every SHARE_POLL_SECONDS: the budget counts on it (ec2backup.budget.FOLLOW_SECONDS)
            if req.budget_id is None or time.monotonic() - last_share[0] < SHARE_POLL_SECONDS:
                return None
            last_share[0] = time.monotonic()
        whole = _budget_share(req.budget_id, workflow_id)
        return None if whole is None else whole * req.budget_fraction

    started = time.monotonic()
    try:
        with role_session(), liveness:
            result = transfer.transfer_range(req, heartbeat, should_stop, share)
    except Exception as exc:
        raise classify(exc) from exc
    observability.record_transfer(
        result.blocks_read, result.bytes_read, result.bytes_stored, time.monotonic() - started
    )
    activity.logger.info(
        "range %d-%d of %s: %d blocks read, %d bytes stored in %s",
        req.start_block,
        req.end_block,
        req.volume.source_volume_id,
        result.blocks_read,
        result.bytes_stored,
        req.repository,
    )
    if activity.is_cancelled():
        raise CancelledError("range cancelled after a durable checkpoint")
    return result


ALL.append(transfer_range)


# ---- archive copies ------------------------------------------------------------------
@activity.defn(name="agent_archive_copy")
def archive_copy(req: ArchiveCopyInput) -> ArchiveCopyOutput:
    """Copy one restore point from the hot repository into the archive repository (decrypt,
    re-encrypt, pack large); heartbeats bytes copied; a cancel stops it (a rerun dedups what
    the index already holds)."""
    from ec2backup.activity_support import classify
    from ec2backup.archive import copy as archive_copy
    from ec2backup.repository.repo import Repository
    from ec2backup.workers import read_session_secret, secret_password

    copied = [0]
    liveness = Liveness(activity.heartbeat)

    def progress(n: int) -> None:
        copied[0] += n
        liveness.heartbeat({"bytes_copied": copied[0]})
        if activity.is_cancelled():
            raise CancelledError("archive copy cancelled")

    try:
        secret = read_session_secret(req.secret_name, req.secret_region)
        password = secret_password(secret)
        hot = Repository.open(req.source_repository, password)
        arc = Repository.open(req.archive_repository, password)
        with role_session(), liveness:
            result = archive_copy.copy_restore_point(
                hot, req.restore_point_id, arc, progress, checkpoint_prefix=req.archive_id
            )
    except CancelledError:
        raise
    except Exception as exc:
        raise classify(exc) from exc
    return ArchiveCopyOutput(
        archive_restore_point_id=result.restore_point_id,
        already_archived=result.already_archived,
        blocks_copied=result.blocks_copied,
        bytes_copied=result.bytes_copied,
        blocks_resumed=result.blocks_resumed,
    )


ALL.append(archive_copy)


# ---- restores ------------------------------------------------------------------------
@activity.defn(name="agent_write_volume")
def write_volume(req: WriteVolumeInput) -> WriteVolumeOutput:
    """Write one volume of a restore point onto this host's empty volume; heartbeats blocks
    written and the last durable checkpoint (a failure carries it too, so the next attempt
    resumes there); a cancel stops it (the restore's cleanup then deletes the volume)."""
    from ec2backup.activity_support import classify
    from worker_agent import restore

    resume = req.resume
    # Until the first run of blocks is written, the beats repeat where this attempt starts.
    liveness = Liveness(
        activity.heartbeat,
        initial=(
            WriteVolumeProgress(
                blocks_written=resume.blocks_written if resume else 0,
                bytes_written=resume.bytes_written if resume else 0,
                checkpoint=resume,
            ),
        ),
    )

    def progress(blocks: int, nbytes: int, checkpoint: RestoreCheckpoint | None) -> None:
        liveness.heartbeat(
            WriteVolumeProgress(blocks_written=blocks, bytes_written=nbytes, checkpoint=checkpoint)
        )
        if activity.is_cancelled():
            raise CancelledError("restore write cancelled")

    try:
        with role_session(), liveness:
            return restore.write_volume(req, progress)
    except CancelledError:
        raise
    except restore.WriteFailed as exc:
        if isinstance(exc.cause, CancelledError):
            raise exc.cause from None
        err = classify(exc.cause)
        raise ApplicationError(
            err.message,
            WriteVolumeProgress(checkpoint=exc.checkpoint),
            type=err.type,
            non_retryable=err.non_retryable,
        ) from exc.cause
    except Exception as exc:
        raise classify(exc) from exc


ALL.append(write_volume)

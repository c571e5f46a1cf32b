"""The restore's data path: a snapshot built from an image-level backup with the EBS direct
write APIs (StartSnapshot, PutSnapshotBlock, CompleteSnapshot)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from ec2backup import aws, snapshots
from ec2backup.models.restore import (
    RestorePlan,
    RestoreSnapshotOutput,
    RestoreVolumePlan,
)
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE
from ec2backup.restore.plan import HEARTBEAT_SECONDS, RESTORE_KEY, TEMP_KEY, RestoreError, _token

# How long a restore waits for a running prune (exclusive lock) before it fails.
LOCK_WAIT_SECONDS = 600.0


# ---- backup -> snapshot (EBS direct) ---------------------------------------------------------
def snapshot_from_backup(
    plan: RestorePlan,
    volume: RestoreVolumePlan,
    password: str,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> RestoreSnapshotOutput:
    from ec2backup.repository.reader import restore_volume
    from ec2backup.repository.repo import Repository

    assert plan.repository and plan.backup_id is not None and volume.record_index is not None
    repo = Repository.open(plan.repository, password.encode())
    _, rp = repo.load_restore_point(plan.backup_id)
    record = rp.volumes[volume.record_index]
    ebs = aws.client("ebs", plan.region, plan.role_arn)
    params: dict[str, Any] = {
        "VolumeSize": volume.size_gib,
        "ClientToken": _token(plan.restore_id, volume.device),
        "Description": f"ec2backup restore {plan.restore_id} {volume.device}",
        "Tags": [
            {"Key": RESTORE_KEY, "Value": plan.restore_id},
            {"Key": TEMP_KEY, "Value": plan.restore_id},
        ],
        "Timeout": 60,
    }
    if volume.encrypted:
        params["Encrypted"] = True
        if volume.kms_key_id:
            params["KmsKeyArn"] = volume.kms_key_id
    # Retried here, not inside boto3, so a cancel is noticed while StartSnapshot is throttled
    # (and before any write).
    starter = aws.single_try_client("ebs", plan.region, plan.role_arn)
    started = aws.call_heartbeating(
        lambda: starter.start_snapshot(**params), heartbeat, f"{volume.device}: starting snapshot"
    )
    snapshot_id = started["SnapshotId"]
    if started["Status"] == "completed":
        return RestoreSnapshotOutput(snapshot_id=snapshot_id, blocks_written=0, bytes_written=0)
    import base64

    written = [0, 0]
    lock = threading.Lock()
    stop = threading.Event()

    def write(offset: int, data: bytes | memoryview) -> None:
        if stop.is_set():
            raise RestoreError("restore stopped")
        block = bytes(data)
        if len(block) < EBS_BLOCK_SIZE:
            block += bytes(EBS_BLOCK_SIZE - len(block))
        checksum = base64.b64encode(hashlib.sha256(block).digest()).decode()
        ebs.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=offset // EBS_BLOCK_SIZE,
            BlockData=block,
            DataLength=EBS_BLOCK_SIZE,
            Checksum=checksum,
            ChecksumAlgorithm="SHA256",
        )
        with lock:
            written[0] += 1
            written[1] += len(data)

    # The blocks move on restore_volume's own threads; this thread (the activity's) only
    # heartbeats, so a cancel reaches the activity at once and stops the writers. A shared
    # lock for as long as packs are read: a prune cannot delete them under the restore.
    with (
        repo.lock(exclusive=False, purpose=f"restore {plan.restore_id}", wait=LOCK_WAIT_SECONDS),
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="restore-writer") as pool,
    ):
        job = pool.submit(restore_volume, repo, record, write)
        try:
            while True:
                try:
                    job.result(timeout=HEARTBEAT_SECONDS)
                    break
                except FutureTimeout:
                    heartbeat(f"{volume.device}: {written[0]} blocks")
        except BaseException:
            stop.set()
            raise
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=written[0])
    snapshots.wait_completed(
        plan.region,
        plan.role_arn,
        [snapshot_id],
        lambda d, t: heartbeat(f"{volume.device}: completing"),
    )
    return RestoreSnapshotOutput(
        snapshot_id=snapshot_id, blocks_written=written[0], bytes_written=written[1]
    )

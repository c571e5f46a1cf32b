"""Control-plane activities of a backup session (task queue `ec2backup`).

Thin adapters: the work is in `ec2backup.snapshots`, `.replication`, `.workers` and
`.imagebackup`; these add heartbeats and error classification. All are idempotent.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from temporalio import activity

from ec2backup import imagebackup, installation, replication, snapshots, workers
from ec2backup.activity_support import adapter, heartbeat, repository_password
from ec2backup.models.session import (
    CommitRestorePointInput,
    CommitRestorePointOutput,
    CommittedVolume,
    ImagePlan,
    PrepareImageInput,
    ProvisionWorkerInput,
    ReleaseWorkerInput,
    ReleaseWorkerOutput,
    ReplicateInput,
    ReplicateOutput,
    SnapshotInstanceInput,
    WaitSnapshotsInput,
    WaitSnapshotsOutput,
    WorkerHandle,
)
from ec2backup.models.snapshots import SnapshotSet
from ec2backup.temporal import temporal_address


@activity.defn(name="snapshot_instance")
@adapter
def snapshot_instance(req: SnapshotInstanceInput) -> SnapshotSet:
    # The catalog looks for this installation's snapshot sets wherever it made some.
    installation.remember_place(req.region, req.account_role_arn)
    return snapshots.create_snapshot_set(
        session_id=req.session_id,
        instance_id=req.instance_id,
        region=req.region,
        role_arn=req.account_role_arn,
        policy_name=req.policy_name,
        installation_key=installation.installation_key(),
        created=req.created,
    )


@activity.defn(name="wait_snapshots")
@adapter
def wait_snapshots(req: WaitSnapshotsInput) -> WaitSnapshotsOutput:
    def on_poll(done: int, total: int) -> None:
        activity.heartbeat(f"{done}/{total} snapshots completed")

    done = snapshots.wait_completed(req.region, req.account_role_arn, req.snapshot_ids, on_poll)
    if req.lock is None:
        return WaitSnapshotsOutput(completed=done)
    until = snapshots.lock_snapshots(req.region, req.account_role_arn, done, req.lock)
    return WaitSnapshotsOutput(completed=done, locked_until=until)


@activity.defn(name="replicate_snapshots")
@adapter
def replicate_snapshots(req: ReplicateInput) -> ReplicateOutput:
    installation.remember_place(req.target.region, req.target.account_role_arn)
    return replication.replicate_set(
        session_id=req.session_id,
        snapshot_set=req.snapshot_set,
        target=req.target,
        installation_key=installation.installation_key(),
        heartbeat=heartbeat,
        max_concurrent=req.max_concurrent,
    )


@activity.defn(name="prepare_image_backup")
@adapter
def prepare_image_backup(req: PrepareImageInput) -> ImagePlan:
    # Before any data moves: a repository the catalog does not know would hide its backups.
    installation.remember_repository(req.spec.repository)
    return imagebackup.prepare(
        req.session_id,
        req.snapshot_set,
        req.spec,
        repository_password(req.spec.repository),
        req.list_rps,
    )


@activity.defn(name="provision_worker")
@adapter
def provision_worker(req: ProvisionWorkerInput) -> WorkerHandle:
    address = os.environ.get("EC2BACKUP_AGENT_TEMPORAL_ADDRESS") or temporal_address()
    namespace = activity.info().workflow_namespace or "default"
    return workers.provision(
        req.session_id, req.plan, req.attempt, address, namespace, heartbeat=heartbeat
    )


@activity.defn(name="release_worker")
@adapter
def release_worker(req: ReleaseWorkerInput) -> ReleaseWorkerOutput:
    out = workers.release(
        req.session_id,
        req.region,
        req.role_arn,
        req.secret_name,
        req.only_instance_id,
        heartbeat=heartbeat,
    )
    if req.repository and req.checkpoint_volumes:
        # After the workers are gone, and never failing their release: a checkpoint left
        # behind only pins data until a later sweep, a worker left behind costs money.
        try:
            out.checkpoints_deleted = imagebackup.drop_checkpoints(
                req.repository,
                req.session_id,
                req.checkpoint_volumes,
                repository_password(req.repository),
            )
        except Exception as exc:
            activity.logger.warning(
                "session %s: checkpoints in %s not removed: %s", req.session_id, req.repository, exc
            )
    return out


@activity.defn(name="commit_restore_point")
@adapter
def commit_restore_point(req: CommitRestorePointInput) -> CommitRestorePointOutput:
    done = imagebackup.commit(
        req.session_id,
        req.snapshot_set,
        req.plan,
        req.policy_name,
        repository_password(req.plan.repository),
    )
    rp_id = done.restore_point_id
    # The set's encrypted tags now name its backup: found from the set alone, no history.
    snapshots.record_backup(
        req.snapshot_set, rp_id, req.plan.repository, installation.installation_key()
    )
    return CommitRestorePointOutput(
        restore_point_id=rp_id,
        anomaly=done.anomaly.verdict if done.anomaly else None,
        anomaly_reasons=list(done.anomaly.reasons) if done.anomaly else [],
        last_clean_restore_point_id=done.last_clean,
        volumes=[
            CommittedVolume(
                volume_id=volume_id,
                blocks_listed=stats.blocks_listed,
                blocks_read=stats.blocks_read,
                bytes_read=stats.bytes_read,
                bytes_stored=stats.bytes_new_stored,
            )
            for volume_id, stats in done.volumes.items()
        ],
    )


ALL: list[Callable[..., Any]] = [
    snapshot_instance,
    wait_snapshots,
    replicate_snapshots,
    prepare_image_backup,
    provision_worker,
    release_worker,
    commit_restore_point,
]

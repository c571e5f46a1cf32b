"""Restore activities (task queue `ec2backup`): thin adapters over `ec2backup.restores`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from temporalio import activity

from ec2backup import installation
from ec2backup.activity_support import (
    adapter,
    heartbeat,
    password_bytes,
    repository_password,
)
from ec2backup.models.restore import (
    CleanupRestoreInput,
    CleanupRestoreOutput,
    FinishRestoreInput,
    FinishRestoreOutput,
    PlanRestoreInput,
    ProvisionRestoreWorkerInput,
    ReleaseRestoreWorkerInput,
    ReleaseRestoreWorkerOutput,
    RestorePlan,
    RestoreWorker,
    RetrievalInput,
    RetrievalOutput,
    SnapshotWorkerVolumesInput,
    SnapshotWorkerVolumesOutput,
)
from ec2backup.restore import launch as restore_launch
from ec2backup.restore import plan as restore_plan
from ec2backup.restore import worker as restore_worker
from ec2backup.temporal import temporal_address


@activity.defn(name="plan_restore")
@adapter
def plan_restore(req: PlanRestoreInput) -> RestorePlan:
    return restore_plan.plan_restore(
        req.restore_id,
        req.request,
        installation.installation_key(create=False),
        os.environ.get("EC2BACKUP_REPO_PASSWORD"),
        copy_missing=req.copy_missing,
        max_copies=req.max_copies,
    )


@activity.defn(name="provision_restore_worker")
@adapter
def provision_restore_worker(req: ProvisionRestoreWorkerInput) -> RestoreWorker:
    # The Janitor sweeps the places the installation remembers: the worker's is one.
    installation.remember_place(req.plan.region, req.plan.role_arn)
    address = os.environ.get("EC2BACKUP_AGENT_TEMPORAL_ADDRESS") or temporal_address()
    namespace = activity.info().workflow_namespace or "default"
    return restore_worker.provision(
        req.plan,
        req.attempt,
        address,
        namespace,
        repository_password(req.plan.repository) if req.plan.repository else None,
        heartbeat=heartbeat,
    )


@activity.defn(name="snapshot_restore_volumes")
@adapter
def snapshot_restore_volumes(req: SnapshotWorkerVolumesInput) -> SnapshotWorkerVolumesOutput:
    return SnapshotWorkerVolumesOutput(
        snapshot_ids=restore_worker.snapshot_volumes(req.plan, req.worker, heartbeat=heartbeat)
    )


@activity.defn(name="release_restore_worker")
@adapter
def release_restore_worker(req: ReleaseRestoreWorkerInput) -> ReleaseRestoreWorkerOutput:
    return restore_worker.release(
        req.restore_id,
        req.region,
        req.role_arn,
        req.secret_name,
        req.only_instance_id,
        heartbeat=heartbeat,
        keep_volumes=req.keep_volumes,
    )


@activity.defn(name="finish_restore")
@adapter
def finish_restore(req: FinishRestoreInput) -> FinishRestoreOutput:
    installation.remember_place(req.plan.region, req.plan.role_arn)  # an image may be left
    return restore_launch.finish(req.plan, req.snapshot_ids, heartbeat=heartbeat)


@activity.defn(name="cleanup_restore")
@adapter
def cleanup_restore(req: CleanupRestoreInput) -> CleanupRestoreOutput:
    return restore_launch.cleanup(req.restore_id, req.region, req.role_arn, req.succeeded)


@activity.defn(name="archive_retrieval")
@adapter
def archive_retrieval(req: RetrievalInput) -> RetrievalOutput:
    """Where an archived restore point's packs stand; RestoreObject those still archived."""
    from ec2backup.archive import copy as archive_copy
    from ec2backup.repository.repo import Repository

    repo = Repository.open(req.repository, password_bytes(repository_password(req.repository)))
    state = archive_copy.retrieval(repo, req.restore_point_id, request=req.request, tier=req.tier)
    return RetrievalOutput(
        packs=state.packs,
        readable=state.readable,
        in_progress=state.in_progress,
        archived=state.archived,
        requested=state.requested,
        ready=state.ready,
    )


ALL: list[Callable[..., Any]] = [
    archive_retrieval,
    plan_restore,
    provision_restore_worker,
    snapshot_restore_volumes,
    release_restore_worker,
    finish_restore,
    cleanup_restore,
]

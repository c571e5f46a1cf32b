"""Restore activities (task queue `ec2backup`): thin adapters over `ec2backup.restores`."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from temporalio import activity

from activities.common import adapter
from ec2backup import installation, restores
from ec2backup.models import (
    CleanupRestoreInput,
    CleanupRestoreOutput,
    FinishRestoreInput,
    FinishRestoreOutput,
    PlanRestoreInput,
    RestorePlan,
    RestoreSnapshotInput,
    RestoreSnapshotOutput,
    RetrievalInput,
    RetrievalOutput,
)


def _heartbeat(detail: str) -> None:
    activity.heartbeat(detail)


@activity.defn(name="plan_restore")
@adapter
def plan_restore(req: PlanRestoreInput) -> RestorePlan:
    return restores.plan_restore(
        req.restore_id,
        req.request,
        installation.installation_key(create=False),
        os.environ.get("EC2BACKUP_REPO_PASSWORD"),
    )


@activity.defn(name="restore_snapshot_from_backup")
@adapter
def restore_snapshot_from_backup(req: RestoreSnapshotInput) -> RestoreSnapshotOutput:
    from activities.session import repository_password

    return restores.snapshot_from_backup(
        req.plan, req.volume, repository_password(), heartbeat=_heartbeat
    )


@activity.defn(name="finish_restore")
@adapter
def finish_restore(req: FinishRestoreInput) -> FinishRestoreOutput:
    return restores.finish(req.plan, req.snapshot_ids)


@activity.defn(name="cleanup_restore")
@adapter
def cleanup_restore(req: CleanupRestoreInput) -> CleanupRestoreOutput:
    return restores.cleanup(req.restore_id, req.region, req.role_arn, req.succeeded)


@activity.defn(name="archive_retrieval")
@adapter
def archive_retrieval(req: RetrievalInput) -> RetrievalOutput:
    """Where an archived restore point's packs stand; RestoreObject those still archived."""
    from activities.session import repository_password
    from ec2backup import archive
    from ec2backup.repository.repo import Repository

    repo = Repository.open(req.repository, repository_password().encode())
    state = archive.retrieval(repo, req.restore_point_id, request=req.request, tier=req.tier)
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
    restore_snapshot_from_backup,
    finish_restore,
    cleanup_restore,
]

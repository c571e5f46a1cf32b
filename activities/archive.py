"""Control-plane activities of the `Archive` workflow (task queue `ec2backup`): plan (resolve,
open or create the archive repository, plan the worker, hand it the password) and verify.
The copy itself is the agent's `agent_archive_copy`, on the worker."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

from temporalio import activity

from ec2backup.activity_support import adapter, environment_password
from ec2backup.archive import copy as archive_copy
from ec2backup.archive import policy as archive_policy
from ec2backup.models.archive import (
    ArchivePlan,
    ArchiveRetentionInput,
    ArchiveRetentionOutput,
    PlanArchiveInput,
    SelectArchiveInput,
    SelectArchiveOutput,
    VerifyArchiveInput,
    VerifyArchiveOutput,
)
from ec2backup.repository.repo import Repository


@activity.defn(name="plan_archive")
@adapter
def plan_archive(req: PlanArchiveInput) -> ArchivePlan:
    return archive_policy.plan(req.archive_id, req.request, environment_password())


@activity.defn(name="verify_archive")
@adapter
def verify_archive(req: VerifyArchiveInput) -> VerifyArchiveOutput:
    repo = Repository.open(req.archive_repository, environment_password().encode())
    out = archive_copy.verify(repo, req.archive_restore_point_id)
    return VerifyArchiveOutput(
        packs=out.packs,
        pack_bytes=out.pack_bytes,
        metadata_objects=out.metadata_objects,
        allocated_bytes=out.allocated_bytes,
        objects_per_gib=round(out.objects_per_gib, 3),
        storage_classes=out.storage_classes,
        problems=out.problems,
    )


ALL: list[Callable[..., Any]] = [plan_archive, verify_archive]


@activity.defn(name="select_for_archive")
@adapter
def select_for_archive(req: SelectArchiveInput) -> SelectArchiveOutput:
    policy = req.policy
    candidates, notes = archive_policy.select(policy, environment_password())
    return SelectArchiveOutput(candidates=candidates, notes=notes)


@activity.defn(name="apply_archive_retention")
@adapter
def apply_archive_retention(req: ArchiveRetentionInput) -> ArchiveRetentionOutput:
    policy = req.policy
    return archive_policy.apply_retention(
        policy,
        req.now or dt.datetime.now(dt.UTC),
        environment_password(),
        dry_run=req.dry_run,
        progress=activity.heartbeat,
    )


ALL += [select_for_archive, apply_archive_retention]

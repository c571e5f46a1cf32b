"""`ArchivePolicy`: what a policy's archive schedule (`ec2backup-archive-<name>`) starts.

    select_for_archive -> Archive child per instance (newest restore point not yet archived;
    at most `concurrency` at a time, REQUEST_CANCEL) -> apply_archive_retention

Query `report` returns the run so far.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    CancelledError,
    ChildWorkflowError,
)

from workflows.common import (
    CONTROL_RETRY,
    LIVENESS_TIMEOUT,
    authorize,
    ensure_search_attributes,
    guarded,
    outcome_on_failure,
    set_outcome,
)

with workflow.unsafe.imports_passed_through():
    from activities import archive as archive_activities
    from ec2backup.authorization import policy_request
    from ec2backup.models.archive import (
        ArchiveInput,
        ArchiveOutcome,
        ArchiveOutput,
        ArchivePolicyOutput,
        ArchiveRetentionInput,
        SelectArchiveInput,
        SelectArchiveOutput,
    )
    from ec2backup.models.authorization import Outcome
    from ec2backup.policy import Policy
    from ec2backup.temporal import search_attributes

# Pruning an archive never repacks (no retrieval), so it is bounded by listing and deletes.
RETENTION_TIMEOUT = timedelta(hours=2)


@workflow.defn(name="ArchivePolicy")
class ArchivePolicy:
    def __init__(self) -> None:
        self._report = ArchivePolicyOutput(policy="", phase="selecting")

    @workflow.query(name="report")
    def report(self) -> ArchivePolicyOutput:
        return self._report

    @workflow.run
    async def run(self, policy: Policy) -> ArchivePolicyOutput:
        name = policy.name
        self._report.policy = name
        ensure_search_attributes("archive", name)
        with outcome_on_failure():
            await authorize(policy_request("ArchivePolicy", policy))
            await self._archive(policy)
        archived = self._report.archived
        ok = sum(a.status in ("completed", "already archived") for a in archived)
        outcome: Outcome = (
            "succeeded" if ok == len(archived) else "failed" if ok == 0 else "partial"
        )
        set_outcome(outcome)
        if outcome == "failed" and guarded():
            # As BackupPolicy: every copy failed, so the run fails (alerts on failed runs).
            raise ApplicationError(
                f"archive policy {name}: all {len(archived)} archive copies failed "
                f"(first: {archived[0].restore_point_id[:12]}: "
                f"{' '.join((archived[0].error or archived[0].status).split())})",
                type="ArchiveRunFailed",
                non_retryable=True,
            )
        return self._report

    async def _archive(self, policy: Policy) -> None:
        name = policy.name
        archive, image = policy.archive, policy.image_backup
        if archive is None or image is None:
            raise ApplicationError(
                f"policy {name} has no archive section (or no image_backup to archive)",
                type="PolicyWithoutArchive",
                non_retryable=True,
            )
        selected: SelectArchiveOutput = await workflow.execute_activity(
            archive_activities.select_for_archive,
            SelectArchiveInput(policy=policy),
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )
        self._report.notes = list(selected.notes)
        self._report.archived = [
            ArchiveOutcome(
                instance_id=c.instance_id, restore_point_id=c.restore_point_id, status="pending"
            )
            for c in selected.candidates
        ]
        self._report.phase = "archiving"
        limit = asyncio.Semaphore(policy.concurrency)
        run_id = workflow.info().workflow_id

        async def one(index: int) -> None:
            outcome = self._report.archived[index]
            async with limit:
                outcome.archive_id = f"{run_id}-{index:04d}"
                outcome.status = "running"
                try:
                    result: ArchiveOutput = await workflow.execute_child_workflow(
                        "Archive",
                        ArchiveInput(
                            restore_point_id=outcome.restore_point_id,
                            source_repository=image.repository,
                            archive_repository=archive.repository,
                            storage_class=archive.storage_class,
                            policy_name=name,
                        ),
                        id=outcome.archive_id,
                        result_type=ArchiveOutput,
                        parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                        search_attributes=search_attributes("archive", name, outcome.instance_id),
                    )
                    outcome.status = result.status
                    outcome.archive_restore_point_id = result.archive_restore_point_id
                except ChildWorkflowError as exc:
                    outcome.status = (
                        "canceled" if isinstance(exc.cause, CancelledError) else "failed"
                    )
                    outcome.error = str(exc.cause or exc)

        await asyncio.gather(*(one(i) for i in range(len(self._report.archived))))
        self._report.phase = "retention"
        try:
            self._report.retention = await workflow.execute_activity(
                archive_activities.apply_archive_retention,
                ArchiveRetentionInput(policy=policy, now=workflow.now()),
                start_to_close_timeout=RETENTION_TIMEOUT,
                heartbeat_timeout=LIVENESS_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=2)),
            )
        except ActivityError as exc:
            self._report.notes.append(f"archive retention failed: {exc.cause or exc}")
        self._report.phase = "done"

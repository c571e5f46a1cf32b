"""`Restore`: an instance or a volume from a snapshot set (or replica), a backup, or an archive.

    plan_restore -> [archive: archive_retrieval, durable timer, ... until every pack is back]
    -> [restore_snapshot_from_backup per volume] -> finish_restore
    finally (shielded): cleanup_restore (temporary snapshots; on failure/cancel everything the
    restore made, found by its tag)

`dry_run` stops after planning: the plan's checks (restore point readable, keys, snapshots,
subnet, zone, instance type, KMS key) are the result; nothing is created.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

from workflows.common import CONTROL_RETRY, cancel_requested, raise_if_cancelled, run_to_completion

with workflow.unsafe.imports_passed_through():
    from activities import restore as restore_activities
    from ec2backup.models.restore import (
        CleanupRestoreInput,
        FinishRestoreInput,
        FinishRestoreOutput,
        PlanRestoreInput,
        RestoreInput,
        RestoreOutput,
        RestorePlan,
        RestoreSnapshotInput,
        RestoreSnapshotOutput,
        RetrievalInput,
        RetrievalOutput,
    )

# Planning may copy a snapshot set to another Region/account first.
PLAN_TIMEOUT = timedelta(hours=24)
DATA_TIMEOUT = timedelta(hours=12)
HEARTBEAT = timedelta(minutes=2)
FINISH_TIMEOUT = timedelta(hours=2)
# How often a restore from the archive looks whether its packs are back. S3 answers Standard
# retrievals in 3-5 hours (GLACIER) or 12 (DEEP_ARCHIVE), Bulk in 5-48: polling more often
# only costs HEAD requests. The wait is a Temporal timer: no worker is held meanwhile.
RETRIEVAL_POLL = {"Standard": timedelta(minutes=15), "Bulk": timedelta(hours=1)}


@workflow.defn(name="Restore")
class Restore:
    def __init__(self) -> None:
        self._phase = "planning"
        self._retrieval: RetrievalOutput | None = None

    @workflow.query(name="phase")
    def phase(self) -> str:
        r = self._retrieval
        if self._phase == "retrieving" and r is not None:
            return f"retrieving ({r.readable}/{r.packs} packs back)"
        return self._phase

    async def _retrieve(self, req: RestoreInput, plan: RestorePlan) -> float:
        """Request the archived packs and wait (timers) until all are readable; seconds."""
        assert plan.repository and plan.backup_id
        self._phase = "retrieving"
        started = workflow.now()
        poll = (
            timedelta(seconds=req.retrieval_poll_seconds)
            if req.retrieval_poll_seconds
            else RETRIEVAL_POLL.get(req.retrieval_tier, RETRIEVAL_POLL["Standard"])
        )
        while True:
            self._retrieval = await workflow.execute_activity(
                restore_activities.archive_retrieval,
                RetrievalInput(
                    repository=plan.repository,
                    restore_point_id=plan.backup_id,
                    tier=req.retrieval_tier,
                ),
                start_to_close_timeout=timedelta(minutes=10),
                retry_policy=CONTROL_RETRY,
            )
            if self._retrieval.ready:
                return (workflow.now() - started).total_seconds()
            await workflow.sleep(poll)

    @workflow.run
    async def run(self, req: RestoreInput) -> RestoreOutput:
        restore_id = workflow.info().workflow_id
        plan: RestorePlan = await workflow.execute_activity(
            restore_activities.plan_restore,
            PlanRestoreInput(restore_id=restore_id, request=req),
            start_to_close_timeout=PLAN_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=CONTROL_RETRY,
        )
        if req.dry_run:
            return RestoreOutput(
                status="dry-run ok",
                kind=req.kind,
                source=plan.source,
                region=plan.region,
                checks=plan.checks,
                source_reason=plan.source_reason,
            )
        succeeded = False
        retrieval_seconds = None
        try:
            written = 0
            if plan.source == "archive":
                retrieval_seconds = await self._retrieve(req, plan)
            self._phase = "restoring"
            if plan.source in ("backup", "archive"):
                results = await asyncio.gather(
                    *(
                        workflow.execute_activity(
                            restore_activities.restore_snapshot_from_backup,
                            RestoreSnapshotInput(plan=plan, volume=v),
                            start_to_close_timeout=DATA_TIMEOUT,
                            heartbeat_timeout=HEARTBEAT,
                            retry_policy=CONTROL_RETRY,
                            # cleanup must not run while a data activity still writes: wait
                            # for each to stop before deleting what it made
                            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                        )
                        for v in plan.volumes
                    ),
                    # All of them end before cleanup runs, even when one fails early.
                    return_exceptions=True,
                )
                for r in results:
                    if isinstance(r, BaseException):
                        raise r
                done_parts = [r for r in results if isinstance(r, RestoreSnapshotOutput)]
                snapshot_ids = {
                    v.device: r.snapshot_id for v, r in zip(plan.volumes, done_parts, strict=True)
                }
                written = sum(r.bytes_written for r in done_parts)
            else:
                snapshot_ids = {v.device: v.snapshot_id or "" for v in plan.volumes}
            raise_if_cancelled()  # the data activities may have finished after the cancel
            done: FinishRestoreOutput = await workflow.execute_activity(
                restore_activities.finish_restore,
                FinishRestoreInput(plan=plan, snapshot_ids=snapshot_ids),
                start_to_close_timeout=FINISH_TIMEOUT,
                retry_policy=CONTROL_RETRY,
            )
            succeeded = True
            return RestoreOutput(
                status="completed",
                kind=req.kind,
                source=plan.source,
                region=plan.region,
                instance_id=done.instance_id,
                volumes=done.volumes,
                checks=plan.checks,
                source_reason=plan.source_reason,
                bytes_written=written,
                retrieval_seconds=retrieval_seconds,
            )
        except ActivityError as exc:
            if cancel_requested():
                raise asyncio.CancelledError() from exc
            raise
        finally:
            await run_to_completion(
                workflow.execute_activity(
                    restore_activities.cleanup_restore,
                    CleanupRestoreInput(
                        restore_id=restore_id,
                        region=plan.region,
                        role_arn=plan.role_arn,
                        succeeded=succeeded,
                    ),
                    start_to_close_timeout=FINISH_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
            )

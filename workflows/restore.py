"""`Restore`: an instance or a volume from a snapshot set (or replica) or from a backup.

    plan_restore -> [restore_snapshot_from_backup per volume] -> finish_restore
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

from workflows.common import CONTROL_RETRY, cancel_requested, run_to_completion

with workflow.unsafe.imports_passed_through():
    from ec2backup.models import (
        CleanupRestoreInput,
        CleanupRestoreOutput,
        FinishRestoreInput,
        FinishRestoreOutput,
        PlanRestoreInput,
        RestoreInput,
        RestoreOutput,
        RestorePlan,
        RestoreSnapshotInput,
        RestoreSnapshotOutput,
    )

# Planning may copy a snapshot set to another Region/account first.
PLAN_TIMEOUT = timedelta(hours=24)
DATA_TIMEOUT = timedelta(hours=12)
HEARTBEAT = timedelta(minutes=2)
FINISH_TIMEOUT = timedelta(hours=2)


@workflow.defn(name="Restore")
class Restore:
    @workflow.run
    async def run(self, req: RestoreInput) -> RestoreOutput:
        restore_id = workflow.info().workflow_id
        plan: RestorePlan = await workflow.execute_activity(
            "plan_restore",
            PlanRestoreInput(restore_id=restore_id, request=req),
            result_type=RestorePlan,
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
            )
        succeeded = False
        try:
            written = 0
            if plan.source == "backup":
                results = await asyncio.gather(
                    *(
                        workflow.execute_activity(
                            "restore_snapshot_from_backup",
                            RestoreSnapshotInput(plan=plan, volume=v),
                            result_type=RestoreSnapshotOutput,
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
            if cancel_requested():  # the data activities may have finished after the cancel
                raise asyncio.CancelledError()
            done: FinishRestoreOutput = await workflow.execute_activity(
                "finish_restore",
                FinishRestoreInput(plan=plan, snapshot_ids=snapshot_ids),
                result_type=FinishRestoreOutput,
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
                bytes_written=written,
            )
        except ActivityError as exc:
            if cancel_requested():
                raise asyncio.CancelledError() from exc
            raise
        finally:
            await run_to_completion(
                workflow.execute_activity(
                    "cleanup_restore",
                    CleanupRestoreInput(
                        restore_id=restore_id,
                        region=plan.region,
                        role_arn=plan.role_arn,
                        succeeded=succeeded,
                    ),
                    result_type=CleanupRestoreOutput,
                    start_to_close_timeout=FINISH_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
            )

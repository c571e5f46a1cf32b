"""`Restore`: an instance or a volume from a snapshot set (or replica), a backup, or an archive.

    plan_restore -> [archive: archive_retrieval, durable timer, ... until every pack is back]
    -> [backup/archive: provision_restore_worker -> agent_write_volume per volume (on the
        worker's task queue) -> snapshot_restore_volumes -> release_restore_worker]
    -> finish_restore
    finally (shielded): cleanup_restore (the worker if still there, temporary snapshots; on
    failure/cancel everything the restore made, found by its tag)

A backup is written by a worker in the target onto volumes created empty (they read as zeros
where nothing is written, encrypted or not), never through the orchestrator: see
`ec2backup.restore.worker` for why not EBS-direct writes. Each volume's write reports durable
checkpoints (in its heartbeats and its failure). A lost worker (heartbeat or schedule-to-start
timeout) is replaced, its volumes kept and attached to the new one: volumes already written
are not written again, the others go on from their last checkpoint (as does a write retried
on the same worker after a transient error).

`dry_run` stops after planning: the plan's checks (restore point readable, keys, snapshots,
subnet, zone, instance type, KMS key) are the result; nothing is created.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

from workflows.budget_shares import copy_slots, give_back_copy_slots
from workflows.common import (
    CONTROL_RETRY,
    LIVENESS_TIMEOUT,
    authorize,
    cancel_requested,
    ensure_search_attributes,
    guarded,
    outcome_on_failure,
    raise_if_cancelled,
    run_to_completion,
    set_outcome,
    settle_round,
)

with workflow.unsafe.imports_passed_through():
    from activities import restore as restore_activities
    from ec2backup.models.authorization import AuthorizeInput
    from ec2backup.models.restore import (
        CleanupRestoreInput,
        FinishRestoreInput,
        FinishRestoreOutput,
        PlanRestoreInput,
        ProvisionRestoreWorkerInput,
        ReleaseRestoreWorkerInput,
        RestoreCheckpoint,
        RestoreInput,
        RestoreOutput,
        RestorePlan,
        RestoreWorker,
        RestoreWorkerVolume,
        RetrievalInput,
        RetrievalOutput,
        SnapshotWorkerVolumesInput,
        SnapshotWorkerVolumesOutput,
        WriteVolumeInput,
        WriteVolumeOutput,
        WriteVolumeProgress,
    )
    from worker_agent import activities as agent_activities

# Planning may copy a snapshot set to another Region/account first.
PLAN_TIMEOUT = timedelta(hours=24)
DATA_TIMEOUT = timedelta(hours=12)
HEARTBEAT = LIVENESS_TIMEOUT
FINISH_TIMEOUT = timedelta(hours=2)
# How often a restore from the archive looks whether its packs are back. S3 answers Standard
# retrievals in 3-5 hours (GLACIER) or 12 (DEEP_ARCHIVE), Bulk in 5-48: polling more often
# only costs HEAD requests. The wait is a Temporal timer: no worker is held meanwhile.
RETRIEVAL_POLL = {"Standard": timedelta(minutes=15), "Bulk": timedelta(hours=1)}
PROVISION_TIMEOUT = timedelta(minutes=30)
SNAPSHOT_TIMEOUT = timedelta(hours=24)
CLEANUP_TIMEOUT = timedelta(minutes=15)
# A lost worker is replaced this many times; a write failing with a retryable error on a live
# worker is tried again this many times, before the restore fails.
MAX_WORKERS = 4
MAX_WRITE_ERRORS = 3
# Histories from before checkpoints (a lost worker took its volumes with it; every volume was
# written again from the start) replay as they ran.
RESUME_PATCH = "restore-resume-v1"
# A restore that copies a snapshot set into another Region or account first plans without
# copying, takes slots of the target's copy budget (shared with sessions' replications), then
# plans again copying at most that many at once. Earlier histories planned (and copied) once.
COPY_BUDGET_PATCH = "restore-copy-budget-v1"


def checkpoint_of(exc: ActivityError) -> RestoreCheckpoint | None:
    """The last durable checkpoint a failed write reported: in its last heartbeat (a timeout)
    or in its failure's details."""
    cause = exc.cause
    if isinstance(cause, TimeoutError):
        details = list(cause.last_heartbeat_details)
    elif isinstance(cause, ApplicationError):
        details = list(cause.details)
    else:
        return None
    if not details or not isinstance(details[0], dict):
        return None
    return WriteVolumeProgress.model_validate(details[0]).checkpoint


@workflow.defn(name="Restore")
class Restore:
    def __init__(self) -> None:
        self._phase = "planning"
        self._retrieval: RetrievalOutput | None = None
        self._worker: RestoreWorker | None = None
        self._written: dict[str, WriteVolumeOutput] = {}
        self._checkpoints: dict[str, RestoreCheckpoint] = {}
        self._resumed: dict[str, int] = {}
        self._workers_used = 0

    @workflow.query(name="phase")
    def phase(self) -> str:
        r = self._retrieval
        if self._phase == "retrieving" and r is not None:
            return f"retrieving ({r.readable}/{r.packs} packs back)"
        if self._phase == "writing" and self._worker is not None:
            return f"writing ({len(self._written)}/{len(self._worker.volumes)} volumes written)"
        return self._phase

    async def _write_backup(self, plan: RestorePlan) -> tuple[dict[str, str], int]:
        """Write every volume on a restore worker and snapshot the volumes: (device ->
        temporary snapshot id, bytes written)."""
        attempts = errors = 0
        while True:
            if self._worker is None:
                if attempts >= MAX_WORKERS:
                    raise ApplicationError(
                        f"{MAX_WORKERS} restore workers were lost; giving up",
                        type="WorkersLost",
                        non_retryable=True,
                    )
                self._phase = "provisioning worker"
                self._worker = await workflow.execute_activity(
                    restore_activities.provision_restore_worker,
                    ProvisionRestoreWorkerInput(plan=plan, attempt=attempts),
                    start_to_close_timeout=PROVISION_TIMEOUT,
                    heartbeat_timeout=HEARTBEAT,
                    retry_policy=CONTROL_RETRY,
                    # cleanup (release by tag) must not run while this still creates things
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                )
                attempts += 1
                self._workers_used = attempts
                raise_if_cancelled()
            worker = self._worker
            todo = [v for v in worker.volumes if v.device not in self._written]
            if not todo:
                break
            self._phase = "writing"
            results = await asyncio.gather(
                *(self._write(plan, worker, v) for v in todo),
                # All of them end before anything is released, even when one fails early.
                return_exceptions=True,
            )
            raise_if_cancelled()
            done, lost, errors = settle_round(todo, results, errors, MAX_WRITE_ERRORS)
            for volume, written in done:
                self._written[volume.device] = written
                if written.resumed_from_block:
                    self._resumed[volume.device] = written.resumed_from_block
            if lost:
                workflow.logger.warning(
                    "restore worker %s lost; provisioning a new one", worker.instance_id
                )
                if workflow.patched(RESUME_PATCH):
                    # Its volumes stay: the next worker gets them attached and goes on.
                    await run_to_completion(
                        self._release(plan, worker.instance_id, keep_volumes=True)
                    )
                else:
                    await run_to_completion(self._release(plan, worker.instance_id))
                    self._written = {}
                self._worker = None
        self._phase = "snapshotting"
        snapped: SnapshotWorkerVolumesOutput = await workflow.execute_activity(
            restore_activities.snapshot_restore_volumes,
            SnapshotWorkerVolumesInput(plan=plan, worker=worker),
            start_to_close_timeout=SNAPSHOT_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=CONTROL_RETRY,
        )
        # The snapshots hold the data now: the worker, its volumes and secret can go.
        await run_to_completion(self._release(plan, None))
        self._worker = None
        return snapped.snapshot_ids, sum(w.bytes_written for w in self._written.values())

    async def _write(
        self, plan: RestorePlan, worker: RestoreWorker, volume: RestoreWorkerVolume
    ) -> WriteVolumeOutput:
        vp = next(v for v in plan.volumes if v.device == volume.device)
        assert vp.record_index is not None
        resume = self._checkpoints.get(volume.device)
        try:
            return await self._write_from(
                plan, worker, volume, vp.size_gib, vp.record_index, resume
            )
        except ActivityError as exc:
            checkpoint = checkpoint_of(exc)
            if checkpoint is not None:
                self._checkpoints[volume.device] = checkpoint
            raise

    async def _write_from(
        self,
        plan: RestorePlan,
        worker: RestoreWorker,
        volume: RestoreWorkerVolume,
        size_gib: int,
        record_index: int,
        resume: RestoreCheckpoint | None,
    ) -> WriteVolumeOutput:
        assert plan.repository and plan.backup_id and plan.secret_name
        result: WriteVolumeOutput = await workflow.execute_activity(
            agent_activities.write_volume,
            WriteVolumeInput(
                restore_id=plan.restore_id,
                repository=plan.repository,
                secret_name=plan.secret_name,
                secret_region=plan.region,
                backup_id=plan.backup_id,
                record_index=record_index,
                device=volume.device,
                worker_device=volume.worker_device,
                volume_id=volume.volume_id,
                size_gib=size_gib,
                resume=resume if resume and resume.volume_id == volume.volume_id else None,
                checkpoint_mib=plan.checkpoint_mib,
            ),
            task_queue=worker.task_queue,
            start_to_close_timeout=DATA_TIMEOUT,
            schedule_to_start_timeout=timedelta(seconds=plan.boot_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(maximum_attempts=1),
            # cleanup must not delete the volume while the agent still writes it
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return result

    async def _release(
        self, plan: RestorePlan, only_instance_id: str | None, keep_volumes: bool = False
    ) -> None:
        await workflow.execute_activity(
            restore_activities.release_restore_worker,
            ReleaseRestoreWorkerInput(
                restore_id=plan.restore_id,
                region=plan.region,
                role_arn=plan.role_arn,
                secret_name=plan.secret_name,
                only_instance_id=only_instance_id,
                keep_volumes=keep_volumes,
            ),
            start_to_close_timeout=CLEANUP_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )

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
                heartbeat_timeout=LIVENESS_TIMEOUT,
                retry_policy=CONTROL_RETRY,
            )
            if self._retrieval.ready:
                return (workflow.now() - started).total_seconds()
            await workflow.sleep(poll)

    @workflow.run
    async def run(self, req: RestoreInput) -> RestoreOutput:
        if guarded():
            ensure_search_attributes("restore", "")
        with outcome_on_failure():
            # Before planning: a plan may already copy a snapshot set into the target account.
            await authorize(
                AuthorizeInput(
                    workflow="Restore",
                    regions=[r for r in (req.region, req.to_region) if r],
                    role_arns=[r for r in (req.account_role_arn, req.to_account_role_arn) if r],
                    repositories=[req.repository] if req.repository else [],
                )
            )
            result = await self._restore(req)
        set_outcome("succeeded")
        return result

    async def _plan_once(self, req: PlanRestoreInput) -> RestorePlan:
        plan: RestorePlan = await workflow.execute_activity(
            restore_activities.plan_restore,
            req,
            start_to_close_timeout=PLAN_TIMEOUT,
            heartbeat_timeout=HEARTBEAT,
            retry_policy=CONTROL_RETRY,
        )
        return plan

    async def _plan(self, restore_id: str, req: RestoreInput) -> RestorePlan:
        if req.dry_run or not workflow.patched(COPY_BUDGET_PATCH):
            return await self._plan_once(PlanRestoreInput(restore_id=restore_id, request=req))
        plan = await self._plan_once(
            PlanRestoreInput(restore_id=restore_id, request=req, copy_missing=False)
        )
        if not plan.copies_needed:
            return plan

        def waiting(why: str) -> None:
            self._phase = f"planning ({why})"

        lease = await copy_slots(
            restore_id, plan.region, plan.role_arn, plan.copies_needed, waiting
        )
        self._phase = f"planning (copying {plan.copies_needed} snapshots to {plan.region})"
        try:
            return await self._plan_once(
                PlanRestoreInput(
                    restore_id=restore_id,
                    request=req,
                    max_copies=max(1, int(lease.rps)),
                )
            )
        finally:
            await run_to_completion(give_back_copy_slots(restore_id, plan.region, lease))

    async def _restore(self, req: RestoreInput) -> RestoreOutput:
        restore_id = workflow.info().workflow_id
        plan = await self._plan(restore_id, req)
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
            if plan.source in ("backup", "archive"):
                snapshot_ids, written = await self._write_backup(plan)
            else:
                snapshot_ids = {v.device: v.snapshot_id or "" for v in plan.volumes}
            raise_if_cancelled()  # the data activities may have finished after the cancel
            self._phase = "restoring"
            done: FinishRestoreOutput = await workflow.execute_activity(
                restore_activities.finish_restore,
                FinishRestoreInput(plan=plan, snapshot_ids=snapshot_ids),
                start_to_close_timeout=FINISH_TIMEOUT,
                # A crashed orchestrator's attempt is retried after this, not after 2 hours;
                # registration and launch are idempotent (image name, ClientToken).
                heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
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
                workers_used=self._workers_used,
                resumed_from_blocks=self._resumed,
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
                    heartbeat_timeout=LIVENESS_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
            )

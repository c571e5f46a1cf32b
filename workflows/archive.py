"""`Archive`: copy one restore point into an archive repository (S3 Glacier classes).

    plan_archive -> [provision_worker -> agent_archive_copy (on the worker) -> verify_archive]
    finally (shielded): release_worker (instance and per-archive secret, by tag)

The worker runs in the backup account, in the archive bucket's Region (the copy crosses no
Region boundary on the way out). Archiving an already archived restore point finds it in
`plan_archive` and starts no worker. A lost worker is replaced (up to MAX_WORKERS); the new
one resumes the copy from the archive's checkpoints (at most a pack's worth of blocks again).
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

from workflows.common import (
    CONTROL_RETRY,
    LIVENESS_TIMEOUT,
    authorize,
    cancel_requested,
    ensure_search_attributes,
    outcome_on_failure,
    raise_if_cancelled,
    run_to_completion,
    set_outcome,
    set_regions,
)

with workflow.unsafe.imports_passed_through():
    from activities import archive as archive_activities
    from activities import session as session_activities
    from ec2backup.models.archive import (
        ArchiveCopyInput,
        ArchiveCopyOutput,
        ArchiveInput,
        ArchiveOutput,
        ArchivePlan,
        PlanArchiveInput,
        VerifyArchiveInput,
        VerifyArchiveOutput,
    )
    from ec2backup.models.authorization import AuthorizeInput
    from ec2backup.models.session import (
        ProvisionWorkerInput,
        ReleaseWorkerInput,
        WorkerHandle,
    )
    from worker_agent import activities as agent_activities

CONTROL_TIMEOUT = timedelta(minutes=10)
# A copy moves one restore point: hours at most even for TiB-sized instances.
COPY_TIMEOUT = timedelta(hours=24)
CLEANUP_TIMEOUT = timedelta(minutes=15)
MAX_WORKERS = 3


@workflow.defn(name="Archive")
class Archive:
    def __init__(self) -> None:
        self._phase = "planning"

    @workflow.query(name="phase")
    def phase(self) -> str:
        return self._phase

    @workflow.run
    async def run(self, req: ArchiveInput) -> ArchiveOutput:
        ensure_search_attributes("archive", req.policy_name)
        with outcome_on_failure():
            await authorize(
                AuthorizeInput(
                    workflow="Archive",
                    repositories=[r for r in (req.source_repository, req.archive_repository) if r],
                )
            )
            result = await self._archive(req)
        set_outcome("succeeded")
        return result

    async def _archive(self, req: ArchiveInput) -> ArchiveOutput:
        archive_id = workflow.info().workflow_id
        plan: ArchivePlan = await workflow.execute_activity(
            archive_activities.plan_archive,
            PlanArchiveInput(archive_id=archive_id, request=req),
            start_to_close_timeout=CONTROL_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )
        if plan.worker is not None:
            set_regions([plan.worker.region])  # where the copy runs (the input names none)
        base = ArchiveOutput(
            status="already archived",
            restore_point_id=plan.restore_point_id,
            archive_restore_point_id=plan.existing_archive_id or "",
            archive_repository=req.archive_repository,
            storage_class=plan.storage_class,
            already_archived=plan.existing_archive_id is not None,
        )
        if plan.existing_archive_id is not None or plan.worker is None:
            self._phase = "done"
            return base
        worker_plan = plan.worker
        try:
            copied: ArchiveCopyOutput | None = None
            worker: WorkerHandle | None = None
            provisioned = 0
            for attempt in range(MAX_WORKERS):
                self._phase = "provisioning worker"
                worker = await workflow.execute_activity(
                    session_activities.provision_worker,
                    ProvisionWorkerInput(session_id=archive_id, plan=worker_plan, attempt=attempt),
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    start_to_close_timeout=CONTROL_TIMEOUT,
                    heartbeat_timeout=LIVENESS_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
                provisioned += 1
                raise_if_cancelled()
                self._phase = "copying"
                try:
                    copied = await workflow.execute_activity(
                        agent_activities.archive_copy,
                        ArchiveCopyInput(
                            archive_id=archive_id,
                            source_repository=plan.source_repository,
                            archive_repository=req.archive_repository,
                            restore_point_id=plan.restore_point_id,
                            secret_name=worker_plan.secret_name,
                            secret_region=worker_plan.region,
                        ),
                        task_queue=worker.task_queue,
                        start_to_close_timeout=COPY_TIMEOUT,
                        schedule_to_start_timeout=timedelta(
                            seconds=worker_plan.boot_timeout_seconds
                        ),
                        heartbeat_timeout=timedelta(seconds=worker_plan.heartbeat_timeout_seconds),
                        retry_policy=RetryPolicy(maximum_attempts=1),
                        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    )
                    break
                except ActivityError as exc:
                    if cancel_requested() or not isinstance(exc.cause, TimeoutError):
                        raise
                    workflow.logger.warning("archive worker %s lost", worker.instance_id)
                    await run_to_completion(
                        self._release(archive_id, worker_plan.region, None, worker.instance_id)
                    )
            if copied is None:
                raise ApplicationError(
                    f"{MAX_WORKERS} archive workers were lost; giving up",
                    type="WorkersLost",
                    non_retryable=True,
                )
            raise_if_cancelled()
            self._phase = "verifying"
            verified: VerifyArchiveOutput = await workflow.execute_activity(
                archive_activities.verify_archive,
                VerifyArchiveInput(
                    archive_repository=req.archive_repository,
                    archive_restore_point_id=copied.archive_restore_point_id,
                ),
                start_to_close_timeout=CONTROL_TIMEOUT,
                heartbeat_timeout=LIVENESS_TIMEOUT,
                retry_policy=CONTROL_RETRY,
            )
            if verified.problems:
                raise ApplicationError(
                    f"archived restore point {copied.archive_restore_point_id[:12]} failed "
                    f"verification: {'; '.join(verified.problems[:3])}",
                    type="ArchiveVerifyFailed",
                    non_retryable=True,
                )
            self._phase = "done"
            return base.model_copy(
                update={
                    "status": "completed",
                    "archive_restore_point_id": copied.archive_restore_point_id,
                    "already_archived": copied.already_archived,
                    "bytes_copied": copied.bytes_copied,
                    "blocks_resumed": copied.blocks_resumed,
                    "workers_provisioned": provisioned,
                    "worker_instance_id": worker.instance_id if worker else None,
                    "verify": verified,
                }
            )
        finally:
            if self._phase != "done":
                self._phase = "cleaning up"
            await run_to_completion(
                self._release(archive_id, worker_plan.region, worker_plan.secret_name, None)
            )

    async def _release(
        self, archive_id: str, region: str, secret_name: str | None, only: str | None
    ) -> None:
        await workflow.execute_activity(
            session_activities.release_worker,
            ReleaseWorkerInput(
                session_id=archive_id,
                region=region,
                role_arn=None,
                secret_name=secret_name,
                only_instance_id=only,
            ),
            start_to_close_timeout=CLEANUP_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )

"""`BackupPolicy`: what a policy's schedule starts. Discovers the instances the policy protects
and runs one `BackupSession` child per instance, at most `concurrency` at a time (children get
REQUEST_CANCEL: a terminated parent still lets them clean up). Signals `pause`/`resume` hold
back children not yet started. Then the policy's retention runs (`ec2backup.retention`). The
result lists every instance with its outcome, and what retention deleted.
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
    Pausable,
    authorize,
    ensure_search_attributes,
    guarded,
    outcome_on_failure,
    set_outcome,
)
from workflows.retention import run_retention

with workflow.unsafe.imports_passed_through():
    from activities import policy as policy_activities
    from ec2backup.authorization import policy_request
    from ec2backup.models.authorization import Outcome
    from ec2backup.models.policy import (
        BackupPolicyOutput,
        DiscoveredInstance,
        DiscoverInput,
        DiscoverOutput,
        InstanceOutcome,
        LockLastCleanInput,
        LockLastCleanOutput,
        NotifyAnomalyInput,
        NotifyInput,
        RetentionInput,
    )
    from ec2backup.models.session import (
        BackupSessionInput,
        BackupSessionOutput,
        ImageBackupSpec,
        ReplicationSpec,
        WorkerSpec,
    )
    from ec2backup.policy import Policy, WorkerConfig
    from ec2backup.temporal import search_attributes


# Locking a last clean point reads its map pages and sets the retention of every object it
# needs (16 at a time): minutes for a large restore point on the first lock.
LOCK_LAST_CLEAN_TIMEOUT = timedelta(minutes=30)
# Publishing is one SNS call; a few attempts ride out throttling, then it is a note.
NOTIFY_TIMEOUT = timedelta(minutes=2)
NOTIFY_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=30))


@workflow.defn(name="BackupPolicy")
class BackupPolicy(Pausable):
    def __init__(self) -> None:
        self._paused = False
        self._phase = "discovering"
        self._report = BackupPolicyOutput(policy="")

    @workflow.query(name="report")
    def report(self) -> BackupPolicyOutput:
        """The run so far: every discovered instance with its outcome (status `pending` until
        its session ends)."""
        return self._report.model_copy(update={"phase": self._phase, "paused": self._paused})

    @workflow.run
    async def run(self, policy: Policy) -> BackupPolicyOutput:
        name = policy.name
        self._report.policy = name
        ensure_search_attributes("policy", name)
        with outcome_on_failure():
            await authorize(policy_request("BackupPolicy", policy))
            await self._backup(policy)
            outcome = run_outcome(self._report.instances)
            if guarded():
                self._report.outcome = outcome
                await self._notify(policy, outcome)
        set_outcome(outcome)
        self._phase = "done"
        if outcome == "failed" and guarded():
            # Every instance failed: the run fails too, so an alert on failed workflows (and
            # the schedule's recent actions) sees the failed night; the report stays
            # readable (query `report`, `ec2backup session report`). A partial run completes
            # with Outcome=partial: alert on `Outcome!='succeeded'` for it.
            first = self._report.instances[0]
            raise ApplicationError(
                f"policy {name}: all {len(self._report.instances)} instances failed "
                f"(first: {first.instance_id}: {' '.join((first.error or first.status).split())})",
                type="PolicyRunFailed",
                non_retryable=True,
            )
        return self._report.model_copy(update={"phase": "done"})

    async def _notify(self, policy: Policy, outcome: Outcome) -> None:
        """The run's summary to the policy's SNS topic when its outcome is one it asked for.
        A failed publish is a note: it must not turn a good backup into a failed run."""
        notify = policy.notify
        if notify is None or outcome not in notify.on:
            return
        try:
            await workflow.execute_activity(
                policy_activities.notify_policy_run,
                NotifyInput(
                    topic_arn=notify.sns_topic_arn,
                    outcome=outcome,
                    run_id=workflow.info().workflow_id,
                    report=self._report.model_copy(update={"phase": "done"}),
                ),
                start_to_close_timeout=NOTIFY_TIMEOUT,
                retry_policy=NOTIFY_RETRY,
            )
        except ActivityError as exc:
            self._report.notes.append(f"notification failed: {exc.cause or exc}")

    async def _react(self, policy: Policy, outcome: InstanceOutcome) -> None:
        """The policy's `on_anomaly` for one flagged instance (ec2backup.reaction). Each
        reaction that fails is a note: the backups stand, the next run reacts again."""
        self._report.notes.append(
            f"ransomware signal on {outcome.instance_id} (restore point "
            f"{outcome.restore_point_id}): {'; '.join(outcome.anomaly_reasons)}; last clean "
            f"restore point: {outcome.last_clean_restore_point_id or 'none'}"
        )
        held: LockLastCleanOutput | None = None
        if "lock-last-clean" in policy.on_anomaly:
            try:
                held = await workflow.execute_activity(
                    policy_activities.lock_last_clean,
                    LockLastCleanInput(policy=policy, instance=outcome, now=workflow.now()),
                    start_to_close_timeout=LOCK_LAST_CLEAN_TIMEOUT,
                    heartbeat_timeout=LIVENESS_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
                if held.restore_point_id is not None and held.until is not None:
                    self._report.notes.append(
                        f"last clean restore point {held.restore_point_id} of "
                        f"{outcome.instance_id} held until {held.until.isoformat()} "
                        f"({held.objects_locked} objects and {len(held.snapshots_locked)} "
                        "snapshots locked now)"
                    )
                self._report.notes += held.notes
            except ActivityError as exc:
                self._report.notes.append(
                    f"lock-last-clean of {outcome.instance_id} failed: {exc.cause or exc}"
                )
        if "notify" in policy.on_anomaly and policy.notify is not None:
            try:
                await workflow.execute_activity(
                    policy_activities.notify_anomaly,
                    NotifyAnomalyInput(
                        topic_arn=policy.notify.sns_topic_arn,
                        policy=policy.name,
                        run_id=workflow.info().workflow_id,
                        instance=outcome,
                        held=held,
                    ),
                    start_to_close_timeout=NOTIFY_TIMEOUT,
                    retry_policy=NOTIFY_RETRY,
                )
            except ActivityError as exc:
                self._report.notes.append(
                    f"anomaly notification for {outcome.instance_id} failed: {exc.cause or exc}"
                )

    async def _backup(self, policy: Policy) -> None:
        """Discovery, one session per instance, then retention: the report holds the result."""
        name = policy.name
        found: DiscoverOutput = await workflow.execute_activity(
            policy_activities.discover_instances,
            DiscoverInput(policy=policy),
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=CONTROL_RETRY,
        )
        limit = asyncio.Semaphore(policy.concurrency)
        run_id = workflow.info().workflow_id
        self._report.notes = list(found.notes)
        self._report.instances = [
            InstanceOutcome(
                instance_id=t.instance_id,
                region=t.region,
                account_role_arn=t.account_role_arn,
                status="pending",
            )
            for t in found.instances
        ]
        self._phase = "backing up"

        async def one(index: int) -> InstanceOutcome:
            target = found.instances[index]
            outcome = self._report.instances[index]
            async with limit:
                await workflow.wait_condition(lambda: not self._paused)
                session_id = f"{run_id}-{index:04d}"
                outcome.session_id = session_id
                outcome.status = "running"
                started = workflow.now()
                try:
                    result: BackupSessionOutput = await workflow.execute_child_workflow(
                        "BackupSession",
                        self._session_input(policy, target, name),
                        id=session_id,
                        result_type=BackupSessionOutput,
                        parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                        search_attributes=search_attributes("backup", name, target.instance_id),
                    )
                    outcome.status = "completed"
                    outcome.restore_point_id = result.restore_point_id
                    outcome.snapshot_set_id = result.snapshot_set_id
                    outcome.bytes_read = sum(v.bytes_read for v in result.volumes)
                    outcome.bytes_stored = sum(v.bytes_stored for v in result.volumes)
                    outcome.anomaly = result.anomaly
                    outcome.anomaly_reasons = list(result.anomaly_reasons)
                    outcome.last_clean_restore_point_id = result.last_clean_restore_point_id
                except ChildWorkflowError as exc:
                    canceled = isinstance(exc.cause, CancelledError)
                    outcome.status = "canceled" if canceled else "failed"
                    outcome.error = _innermost(exc)
                outcome.seconds = (workflow.now() - started).total_seconds()
            return outcome

        await asyncio.gather(*(one(i) for i in range(len(found.instances))))
        if workflow.patched("on-anomaly-v1"):
            # Before retention: the last clean point must be held before anything may go.
            for outcome in self._report.instances:
                if outcome.anomaly == "anomaly":
                    await self._react(policy, outcome)
        self._phase = "retention"
        try:
            self._report.retention = await run_retention(RetentionInput(policy=policy))
        except ActivityError as exc:
            # The sessions' outcomes stand; the next run retries retention (it is idempotent).
            self._report.notes.append(f"retention failed: {exc.cause or exc}")

    @staticmethod
    def _session_input(policy: Policy, target: DiscoveredInstance, name: str) -> BackupSessionInput:
        """The session of one instance: every replication target of the policy, and the image
        backup with the worker settings of the instance's Region."""
        replications = [
            ReplicationSpec(
                region=t.region, account_role_arn=t.account_role_arn, kms_key_id=t.kms_key_id
            )
            for t in (policy.replication.targets if policy.replication else [])
        ]
        image = None
        spec = policy.image_backup
        if spec is not None:
            worker = spec.workers.get(target.region) or WorkerConfig()
            image = ImageBackupSpec(
                repository=spec.repository,
                keep_days=spec.retention.horizon_days(),
                object_lock=spec.object_lock,
                worker=WorkerSpec(
                    placement=worker.placement,
                    subnet_id=worker.subnet_id,
                    security_group_ids=list(worker.security_group_ids),
                    instance_type=worker.instance_type,
                    copies=worker.copies,
                    read=worker.read,
                ),
            )
        return BackupSessionInput(
            instance_id=target.instance_id,
            region=target.region,
            account_role_arn=target.account_role_arn,
            replications=replications,
            image_backup=image,
            policy_name=name,
            snapshot_lock=policy.snapshots.lock,
        )


def run_outcome(instances: list[InstanceOutcome]) -> Outcome:
    """succeeded: every instance completed (or there were none); failed: none did; partial:
    some. Retention failures are notes, not outcomes: the next run retries them."""
    completed = sum(o.status == "completed" for o in instances)
    if completed == len(instances):
        return "succeeded"
    return "failed" if completed == 0 else "partial"


def _innermost(exc: BaseException) -> str:
    """The root cause's message ("Activity task failed" says nothing to an operator)."""
    while getattr(exc, "cause", None) is not None:
        exc = exc.cause  # type: ignore[attr-defined]
    return str(exc) or type(exc).__name__

"""`BackupSession`: one EC2 instance's backup, as a durable workflow.

    snapshot_instance -> wait_snapshots -> [replicate_snapshots]
    -> [prepare_image_backup -> provision_worker -> agent_transfer_range x N -> commit]
    finally (shielded): release_worker            (worker + volumes + session secret, by tag)

Transfers run in rounds: each round runs one range of every unfinished volume concurrently
(ranges of one volume are sequential: one block map writer per volume). Round boundaries are
where pause takes effect, where a lost host is replaced (the new worker resumes from the
repository checkpoint) and where continue-as-new happens when the server suggests it.
"""

from __future__ import annotations

import asyncio
import collections
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError

from workflows.budget_shares import copy_slots, give_back, give_back_copy_slots, share_of
from workflows.common import (
    CONTROL_RETRY,
    LIVENESS_TIMEOUT,
    Pausable,
    authorize,
    cancel_requested,
    ensure_search_attributes,
    outcome_on_failure,
    raise_if_cancelled,
    run_to_completion,
    set_outcome,
    settle_round,
)

with workflow.unsafe.imports_passed_through():
    from activities import session as session_activities
    from ec2backup.budget import (
        FOLLOW_SECONDS,
        GET_SNAPSHOT_BLOCK,
        LIST_APIS,
        LIST_WANT_RPS_PER_STREAM,
        budget_id,
        list_api,
    )
    from ec2backup.models.authorization import AuthorizeInput
    from ec2backup.models.budget import BudgetLease, BudgetReleaseRequest, BudgetRequest
    from ec2backup.models.session import (
        BackupSessionInput,
        BackupSessionOutput,
        CommitRestorePointInput,
        CommitRestorePointOutput,
        ImagePlan,
        PrepareImageInput,
        ProgressInput,
        ProvisionWorkerInput,
        ReleaseWorkerInput,
        ReplicateInput,
        ReplicateOutput,
        ReplicationSpec,
        SessionCarry,
        SessionProgress,
        SnapshotInstanceInput,
        Stream,
        TransferRangeInput,
        TransferRangeOutput,
        VolumeCounters,
        VolumePlan,
        VolumeProgress,
        WaitSnapshotsInput,
        WorkerHandle,
    )
    from ec2backup.models.snapshots import SnapshotSet
    from worker_agent import activities as agent_activities

CONTROL_TIMEOUT = timedelta(minutes=10)
# Snapshots of large, busy volumes can stay pending for hours.
SNAPSHOT_WAIT_TIMEOUT = timedelta(hours=24)
SNAPSHOT_HEARTBEAT_TIMEOUT = LIVENESS_TIMEOUT
# One transfer range moves at most a few GiB; hours is generous even for slow volumes.
RANGE_TIMEOUT = timedelta(hours=6)
# Ranges that fail with a retryable error on a live host are retried this many times before the
# session gives up; a lost host (timeout) is replaced instead, up to MAX_WORKERS times.
MAX_RANGE_ERRORS = 5
MAX_WORKERS = 4
CLEANUP_TIMEOUT = timedelta(minutes=15)
# Sessions that read with EBS direct ask their account's budget for a share (ec2backup.budget):
# one update of a workflow, retried by CONTROL_RETRY when Temporal is slow to answer.
BUDGET_PATCH = "rate-budget-v1"
# Replications ask for a share of the destination's copy slots (ec2backup.budget.COPY_SNAPSHOT).
COPY_BUDGET_PATCH = "copy-budget-v1"
# Sessions pace their ListChangedBlocks/ListSnapshotBlocks calls to a share of the account's
# list budgets (ec2backup.budget.LIST_APIS), from the plan on.
LIST_BUDGET_PATCH = "list-budget-v1"


@workflow.defn(name="BackupSession")
class BackupSession(Pausable):
    @workflow.init
    def __init__(self, req: BackupSessionInput) -> None:
        self._req = req
        # Only a continuation of this session may bring its carry (run() refuses it otherwise).
        continued = workflow.info().continued_run_id is not None
        self._carry = (req.carry if continued else None) or SessionCarry()
        self._phase_now = "starting"
        self._paused = False

    @property
    def _phase(self) -> str:
        return self._phase_now

    @_phase.setter
    def _phase(self, value: str) -> None:
        """Every phase change is also written to the memo, so `ec2backup session list` (and the
        Web UI) show phase and bytes without querying each running session."""
        self._phase_now = value
        workflow.upsert_memo(
            {
                "phase": value,
                "policy": self._req.policy_name,
                "instance": self._req.instance_id,
                "region": self._req.region,
                "bytes_read": sum(v.bytes_read for v in self._carry.volumes),
                "bytes_stored": sum(v.bytes_stored for v in self._carry.volumes),
            }
        )

    # ---- signals and queries -------------------------------------------------------------
    @workflow.query(name="progress")
    def progress(self, req: ProgressInput | None = None) -> SessionProgress:
        plan = self._carry.plan
        volumes = []
        counters = {c.volume_id: c for c in self._carry.volumes}
        for vp in plan.volumes if plan else []:
            c = counters.get(vp.source_volume_id)
            volumes.append(
                VolumeProgress(
                    volume_id=vp.source_volume_id,
                    device=vp.device,
                    blocks_total=vp.blocks_total,
                    blocks_done=sum(
                        min(s.end, self._carry.cursors.get(s.key, s.start)) - s.start
                        for s in vp.spans()
                    ),
                    bytes_read=c.bytes_read if c else 0,
                    bytes_stored=c.bytes_stored if c else 0,
                )
            )
        worker = self._carry.worker
        return SessionProgress(
            phase=self._phase,
            paused=self._paused,
            worker_instance_id=worker.instance_id if worker else None,
            volumes=volumes,
        )

    # ---- the session ---------------------------------------------------------------------
    @workflow.run
    async def run(self, req: BackupSessionInput) -> BackupSessionOutput:
        ensure_search_attributes("backup", req.policy_name, req.instance_id)
        with outcome_on_failure():
            if req.carry is not None and workflow.info().continued_run_id is None:
                # `carry` is what continue-as-new hands to the next run (a worker, cursors):
                # taken from an outside start it would make the session trust a worker and
                # transfer state nobody authorized.
                raise ApplicationError(
                    "BackupSession: carry is internal continue-as-new state; "
                    "start a session without it",
                    type="InvalidInput",
                    non_retryable=True,
                )
            # Before anything else (also on continuations: the configuration may have
            # changed), and outside the session's cleanup: a refused run touches nothing.
            await authorize(
                AuthorizeInput(
                    workflow="BackupSession",
                    regions=[req.region, *(t.region for t in req.replication_targets())],
                    role_arns=[
                        r
                        for r in [
                            req.account_role_arn,
                            *(t.account_role_arn for t in req.replication_targets()),
                        ]
                        if r
                    ],
                    repositories=[req.image_backup.repository] if req.image_backup else [],
                )
            )
            result = await self._session(req)
        set_outcome("succeeded")
        return result

    async def _session(self, req: BackupSessionInput) -> BackupSessionOutput:
        session_id = workflow.info().workflow_id
        try:
            snapshot_set = await self._snapshots(session_id)
            raise_if_cancelled()
            await self._replicate(session_id, snapshot_set, req.replication_targets())
            raise_if_cancelled()
            committed = None
            if req.image_backup:
                committed = await self._image_backup(session_id, snapshot_set)
                self._take_committed_counts(committed)
            self._phase = "completed"
            plan = self._carry.plan
            return BackupSessionOutput(
                status="completed",
                snapshot_set_id=snapshot_set.set_id,
                snapshot_ids=[m.snapshot_id for m in snapshot_set.members],
                replica_ids=self._carry.replica_ids,
                replicas=self._carry.replicas,
                restore_point_id=committed.restore_point_id if committed else None,
                anomaly=committed.anomaly if committed else None,
                anomaly_reasons=committed.anomaly_reasons if committed else [],
                last_clean_restore_point_id=(
                    committed.last_clean_restore_point_id if committed else None
                ),
                placement=plan.placement if plan else None,
                placement_reason=plan.placement_reason if plan else None,
                workers_provisioned=self._carry.workers_provisioned,
                volumes=self._carry.volumes,
            )
        except ActivityError as exc:
            if cancel_requested():
                raise asyncio.CancelledError() from exc
            raise
        finally:
            if req.image_backup and not self._continuing:
                ended_in = self._phase  # what the memo keeps: "completed" or where it failed
                self._phase = "cleaning up"
                await run_to_completion(self._release_budget(session_id))
                await run_to_completion(self._release(session_id, None))
                self._phase = ended_in

    _continuing = False

    async def _replicate(
        self, session_id: str, snapshot_set: SnapshotSet, targets: list[ReplicationSpec]
    ) -> None:
        """Copy the set to every target, one after the other (each target is its own Region's
        copy quota); the targets done so far survive continue-as-new in the carry."""
        for target in targets[len(self._carry.replicas) :]:
            self._phase = "replicating"
            raise_if_cancelled()
            lease: BudgetLease | None = None
            if workflow.patched(COPY_BUDGET_PATCH):
                lease = await self._copy_slots(session_id, target, len(snapshot_set.members))
            try:
                replicas: ReplicateOutput = await workflow.execute_activity(
                    session_activities.replicate_snapshots,
                    ReplicateInput(
                        session_id=session_id,
                        snapshot_set=snapshot_set,
                        target=target,
                        max_concurrent=max(1, int(lease.rps)) if lease else 20,
                    ),
                    start_to_close_timeout=SNAPSHOT_WAIT_TIMEOUT,
                    heartbeat_timeout=SNAPSHOT_HEARTBEAT_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
            finally:
                if lease is not None:
                    await run_to_completion(give_back_copy_slots(session_id, target.region, lease))
            self._carry.replicas.append(replicas)
            self._carry.replica_ids += replicas.replica_ids

    async def _copy_slots(self, session_id: str, target: ReplicationSpec, want: int) -> BudgetLease:
        """Slots of the destination's copy budget: waits while others hold every one."""

        def waiting(why: str) -> None:
            self._phase = f"replicating ({why})"

        lease = await copy_slots(session_id, target.region, target.account_role_arn, want, waiting)
        self._phase = "replicating"
        return lease

    async def _snapshots(self, session_id: str) -> SnapshotSet:
        if self._carry.snapshot_set is not None:
            return self._carry.snapshot_set
        req = self._req
        self._phase = "snapshotting"
        snapshot_set: SnapshotSet = await workflow.execute_activity(
            session_activities.snapshot_instance,
            SnapshotInstanceInput(
                session_id=session_id,
                instance_id=req.instance_id,
                region=req.region,
                account_role_arn=req.account_role_arn,
                policy_name=req.policy_name,
                created=req.as_of or workflow.now(),
            ),
            start_to_close_timeout=CONTROL_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )
        self._phase = "waiting for snapshots"
        await workflow.execute_activity(
            session_activities.wait_snapshots,
            WaitSnapshotsInput(
                region=req.region,
                account_role_arn=req.account_role_arn,
                snapshot_ids=[m.snapshot_id for m in snapshot_set.members],
                lock=req.snapshot_lock,
            ),
            start_to_close_timeout=SNAPSHOT_WAIT_TIMEOUT,
            heartbeat_timeout=SNAPSHOT_HEARTBEAT_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )
        self._carry.snapshot_set = snapshot_set
        return snapshot_set

    async def _image_backup(
        self, session_id: str, snapshot_set: SnapshotSet
    ) -> CommitRestorePointOutput:
        spec = self._req.image_backup
        assert spec is not None
        if self._carry.plan is None:
            self._phase = "planning"
            list_rps: dict[str, float] = {}
            if workflow.patched(LIST_BUDGET_PATCH):
                # The plan counts each volume's blocks to read (whole-volume lists).
                list_rps = await self._list_shares(
                    session_id, snapshot_set, dict.fromkeys(LIST_APIS, 1)
                )
            self._carry.plan = await workflow.execute_activity(
                session_activities.prepare_image_backup,
                PrepareImageInput(
                    session_id=session_id,
                    snapshot_set=snapshot_set,
                    spec=spec,
                    list_rps=list_rps,
                ),
                start_to_close_timeout=CONTROL_TIMEOUT,
                heartbeat_timeout=LIVENESS_TIMEOUT,
                retry_policy=CONTROL_RETRY,
            )
            self._carry.volumes = [
                VolumeCounters(
                    volume_id=vp.source_volume_id,
                    device=vp.device,
                    cbt_used=vp.parent_snapshot_id is not None,
                    cbt_reason=vp.cbt_reason,
                    read=vp.read,
                    read_reason=vp.read_reason,
                )
                for vp in self._carry.plan.volumes
            ]
        plan = self._carry.plan
        errors = 0
        while True:
            # One range per stream and round (a volume is one stream unless its plan reads it
            # with several writers at once: VolumePlan.spans).
            todo = [
                (vp, s)
                for vp in plan.volumes
                for s in vp.spans()
                if self._carry.cursors.get(s.key, s.start) < s.end
            ]
            if not todo:
                break
            if self._paused:
                self._phase = "paused"
                await workflow.wait_condition(lambda: not self._paused)
            if workflow.info().is_continue_as_new_suggested():
                self._continuing = True
                workflow.continue_as_new(self._req.model_copy(update={"carry": self._carry}))
            if self._carry.worker is None:
                if self._carry.workers_provisioned >= MAX_WORKERS:
                    raise ApplicationError(
                        f"{MAX_WORKERS} workers were lost; giving up",
                        type="WorkersLost",
                        non_retryable=True,
                    )
                self._phase = "provisioning worker"
                self._carry.worker = await workflow.execute_activity(
                    session_activities.provision_worker,
                    ProvisionWorkerInput(
                        session_id=session_id, plan=plan, attempt=self._carry.workers_provisioned
                    ),
                    # Cleanup (release by tag) must not run while this still creates things.
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    start_to_close_timeout=CONTROL_TIMEOUT,
                    heartbeat_timeout=LIVENESS_TIMEOUT,
                    retry_policy=CONTROL_RETRY,
                )
                self._carry.workers_provisioned += 1
                raise_if_cancelled()
            self._phase = "transferring"
            worker = self._carry.worker
            direct = sum(vp.read == "ebs-direct" for vp, _s in todo)
            get_rps = None
            if direct and workflow.patched(BUDGET_PATCH):
                # This round's share of the account's GetSnapshotBlock budget, split between
                # its direct streams (renewed each round: others come and go).
                lease = await share_of(
                    BudgetRequest(
                        account=snapshot_set.account,
                        region=plan.region,
                        api=GET_SNAPSHOT_BLOCK,
                        holder=session_id,
                        want_rps=plan.ebs_direct_rps,
                        # its agent polls its share (worker_agent.activities)
                        follow_seconds=FOLLOW_SECONDS,
                    )
                )
                self._carry.budget_account = snapshot_set.account
                get_rps = lease.rps / direct
            # Every stream lists; each gets its part of its list API's share (renewed here).
            list_streams = collections.Counter(list_api(vp.parent_snapshot_id) for vp, _s in todo)
            per_stream: dict[str, float] = {}
            if workflow.patched(LIST_BUDGET_PATCH):
                shares = await self._list_shares(session_id, snapshot_set, dict(list_streams))
                per_stream = {api: rps / list_streams[api] for api, rps in shares.items()}
            results = await asyncio.gather(
                *(
                    self._range(
                        session_id,
                        plan,
                        worker,
                        vp,
                        s,
                        get_rps,
                        1 / max(1, direct),
                        per_stream.get(list_api(vp.parent_snapshot_id)),
                    )
                    for vp, s in todo
                ),
                return_exceptions=True,
            )
            raise_if_cancelled()
            done, lost, errors = settle_round(todo, results, errors, MAX_RANGE_ERRORS)
            for (vp, s), result in done:
                self._account(vp, s, result)
            if lost:
                workflow.logger.warning(
                    "worker %s lost; provisioning a new one", worker.instance_id
                )
                await run_to_completion(self._release(session_id, worker.instance_id))
                self._carry.worker = None
        await self._release_budget(session_id)
        self._phase = "committing"
        out: CommitRestorePointOutput = await workflow.execute_activity(
            session_activities.commit_restore_point,
            CommitRestorePointInput(
                session_id=session_id,
                repository=plan.repository,
                snapshot_set=snapshot_set,
                plan=plan,
                policy_name=self._req.policy_name,
            ),
            start_to_close_timeout=CONTROL_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )
        if out.anomaly == "anomaly":
            workflow.logger.warning(
                "ransomware signal on %s: %s (last clean restore point: %s)",
                snapshot_set.instance_id,
                "; ".join(out.anomaly_reasons),
                out.last_clean_restore_point_id or "none",
            )
        return out

    async def _range(
        self,
        session_id: str,
        plan: ImagePlan,
        worker: WorkerHandle,
        vp: VolumePlan,
        s: Stream,
        get_rps: float | None = None,
        fraction: float = 1.0,
        list_rps: float | None = None,
    ) -> TransferRangeOutput:
        paced = get_rps is not None and vp.read == "ebs-direct"
        account = self._carry.budget_account
        cursor = self._carry.cursors.get(s.key, s.start)
        start = s.start + (cursor - s.start) // plan.range_blocks * plan.range_blocks
        end = min(s.end, start + plan.range_blocks)
        range_no = start // plan.range_blocks
        if s.device is not None:
            device = s.device  # a stream reads its own copy
        else:  # one stream: consecutive ranges alternate between the copies
            device = (
                vp.worker_devices[range_no % len(vp.worker_devices)]
                if vp.worker_devices
                else vp.worker_device
            )
        result: TransferRangeOutput = await workflow.execute_activity(
            agent_activities.transfer_range,
            TransferRangeInput(
                session_id=session_id,
                repository=plan.repository,
                secret_name=plan.secret_name,
                secret_region=plan.region,
                snapshot_role_arn=plan.snapshot_role_arn,
                region=plan.region,
                volume=vp,
                worker_device=device,
                worker_volume_id=next(
                    (
                        v.volume_id
                        for v in worker.volumes
                        if v.source_volume_id == vp.source_volume_id and v.device == device
                    ),
                    None,
                ),
                start_block=start,
                end_block=end,
                cursor=cursor,
                last_range=end >= vp.blocks_total,
                stream=None if s.key == vp.source_volume_id else s.key,
                span_end=None if s.key == vp.source_volume_id else s.end,
                get_rps=get_rps if paced else None,
                budget_id=budget_id(account, plan.region, GET_SNAPSHOT_BLOCK)
                if paced and account
                else None,
                budget_fraction=fraction,
                list_rps=list_rps,
            ),
            task_queue=worker.task_queue,
            start_to_close_timeout=RANGE_TIMEOUT,
            schedule_to_start_timeout=timedelta(seconds=plan.boot_timeout_seconds),
            heartbeat_timeout=timedelta(seconds=plan.heartbeat_timeout_seconds),
            retry_policy=RetryPolicy(maximum_attempts=1),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        return result

    def _take_committed_counts(self, committed: CommitRestorePointOutput) -> None:
        """The session reports what its restore point records: the ranges' sums (kept for
        progress) miss what an attempt lost after a checkpoint made durable (its result never
        came). A commit that predates these counts (replayed history) leaves the sums."""
        recorded = {v.volume_id: v for v in committed.volumes}
        for c in self._carry.volumes:
            v = recorded.get(c.volume_id)
            if v is None:
                continue
            c.blocks_read, c.bytes_read = v.blocks_read, v.bytes_read
            c.bytes_stored = v.bytes_stored
            if v.blocks_listed:  # 0: a restore point written before it was recorded
                c.blocks_listed = v.blocks_listed

    def _account(self, vp: VolumePlan, s: Stream, result: TransferRangeOutput) -> None:
        self._carry.cursors[s.key] = result.cursor
        for c in self._carry.volumes:
            if c.volume_id == vp.source_volume_id:
                c.blocks_listed += result.blocks_listed
                c.blocks_read += result.blocks_read
                c.bytes_read += result.bytes_read
                c.bytes_stored += result.bytes_stored

    async def _list_shares(
        self, session_id: str, snapshot_set: SnapshotSet, streams: dict[str, int]
    ) -> dict[str, float]:
        """This session's share of each list API's budget, for `streams` streams calling it."""
        leases = await asyncio.gather(
            *(
                share_of(
                    BudgetRequest(
                        account=snapshot_set.account,
                        region=snapshot_set.region,
                        api=api,
                        holder=session_id,
                        want_rps=n * LIST_WANT_RPS_PER_STREAM,
                    )
                )
                for api, n in streams.items()
            )
        )
        for api, lease in zip(streams, leases, strict=True):
            self._carry.list_budgets[api] = lease.account or snapshot_set.account
        return {api: lease.rps for api, lease in zip(streams, leases, strict=True)}

    async def _release_budget(self, session_id: str) -> None:
        """Give back the shares of the EBS direct budgets (once the reads are over)."""
        plan, account = self._carry.plan, self._carry.budget_account
        held = dict(self._carry.list_budgets)
        if account is not None and plan is not None:
            held[GET_SNAPSHOT_BLOCK] = account
        snapshot_set = self._carry.snapshot_set
        if not held or snapshot_set is None:
            return
        region = plan.region if plan is not None else snapshot_set.region
        await asyncio.gather(
            *(
                give_back(
                    BudgetReleaseRequest(account=a, region=region, api=api, holder=session_id)
                )
                for api, a in held.items()
            )
        )
        self._carry.budget_account = None
        self._carry.list_budgets = {}

    async def _release(self, session_id: str, only_instance_id: str | None) -> None:
        plan = self._carry.plan
        if plan is None:
            return  # nothing provisioned; a secret a cancelled prepare wrote is the janitor's
        await workflow.execute_activity(
            session_activities.release_worker,
            ReleaseWorkerInput(
                session_id=session_id,
                region=plan.region,
                role_arn=plan.worker_role_arn,
                secret_name=plan.secret_name,
                only_instance_id=only_instance_id,
                repository=None if only_instance_id else plan.repository,
                checkpoint_volumes=[]
                if only_instance_id
                else [s.key for v in plan.volumes for s in v.spans()],
            ),
            start_to_close_timeout=CLEANUP_TIMEOUT,
            heartbeat_timeout=LIVENESS_TIMEOUT,
            retry_policy=CONTROL_RETRY,
        )


__all__ = ["BackupSession", "CancelledError"]

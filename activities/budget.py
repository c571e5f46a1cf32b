"""Budget activities (task queue `ec2backup`): a session's share of an account's request
budget from its `RateBudget` workflow (ec2backup.budget), started with the first request."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from ec2backup import budget, config
from ec2backup.models.budget import (
    AcquireBudgetInput,
    BudgetInput,
    BudgetLease,
    BudgetReleaseRequest,
    BudgetRequest,
    ReleaseBudgetInput,
    ReleaseBudgetOutput,
)
from ec2backup.temporal import TASK_QUEUE

# A share is held this long unless renewed (every round of a session's ranges renews it): a
# session that died without releasing frees its share after this.
LEASE_SECONDS = 30 * 60.0


@activity.defn(name="acquire_budget")
async def acquire_budget(req: BudgetRequest) -> BudgetLease:
    # The only budgeted API so far: GetSnapshotBlock (ec2backup.budget.GET_SNAPSHOT_BLOCK).
    quota = float(config.load().performance.ebs_get_block_rps_account)
    start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
        "RateBudget",
        BudgetInput(account=req.account, region=req.region, api=req.api, quota_rps=quota),
        id=budget.budget_id(req.account, req.region, req.api),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=TASK_QUEUE,
    )
    lease: BudgetLease = await activity.client().execute_update_with_start_workflow(
        "acquire",
        AcquireBudgetInput(
            holder=req.holder, want_rps=req.want_rps, ttl_seconds=LEASE_SECONDS, quota_rps=quota
        ),
        start_workflow_operation=start,
        result_type=BudgetLease,
    )
    activity.logger.info(
        "%s: %.0f %s/s of %.0f in %s/%s (%d sessions)",
        req.holder,
        lease.rps,
        req.api,
        lease.quota_rps,
        req.account,
        req.region,
        lease.holders,
    )
    return lease


@activity.defn(name="release_budget")
async def release_budget(req: BudgetReleaseRequest) -> ReleaseBudgetOutput:
    """Give the share back; a budget workflow that ended meanwhile has nothing to release."""
    handle = activity.client().get_workflow_handle(
        budget.budget_id(req.account, req.region, req.api)
    )
    try:
        out: ReleaseBudgetOutput = await handle.execute_update(
            "release", ReleaseBudgetInput(holder=req.holder), result_type=ReleaseBudgetOutput
        )
    except RPCError:
        return ReleaseBudgetOutput(released=False)
    return out


ALL: list[Callable[..., Any]] = [acquire_budget, release_budget]

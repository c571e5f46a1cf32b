"""Budget activities (task queue `ec2backup`): a session's share of an account's request
budget from its `RateBudget` workflow (ec2backup.budget), started with the first request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from ec2backup import aws, budget, config
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
# Copy slots are held while a target's copies run, which is not renewed: hours for large
# first copies (AWS: up to 500 MiB/s per copy).
COPY_LEASE_SECONDS = 6 * 3600.0


def _quota(api: str) -> float:
    performance = config.load().performance
    if api == budget.COPY_SNAPSHOT:
        return float(performance.copy_snapshot_concurrency)
    if api == budget.GET_SNAPSHOT_BLOCK:
        return float(performance.ebs_get_block_rps_account)
    if api in budget.LIST_APIS:
        return float(performance.ebs_list_rps_account)
    raise ValueError(f"no budget for API {api!r}")


@activity.defn(name="acquire_budget")
async def acquire_budget(req: BudgetRequest) -> BudgetLease:
    quota = _quota(req.api)
    account = req.account or await asyncio.to_thread(
        aws.caller_account, req.region, req.account_role_arn
    )
    start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
        "RateBudget",
        BudgetInput(account=account, region=req.region, api=req.api, quota_rps=quota),
        id=budget.budget_id(account, req.region, req.api),
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=TASK_QUEUE,
    )
    lease: BudgetLease = await activity.client().execute_update_with_start_workflow(
        "acquire",
        AcquireBudgetInput(
            holder=req.holder,
            want_rps=req.want_rps,
            ttl_seconds=COPY_LEASE_SECONDS if req.api == budget.COPY_SNAPSHOT else LEASE_SECONDS,
            quota_rps=quota,
            slots=req.api == budget.COPY_SNAPSHOT,
            follow_seconds=req.follow_seconds,
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
        account,
        req.region,
        lease.holders,
    )
    return lease.model_copy(update={"account": account})


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

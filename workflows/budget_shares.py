"""A workflow's shares of the installation's budgets (ec2backup.budget): the activities that
ask a `RateBudget` workflow for a share and give it back, and the wait for CopySnapshot slots
that sessions' replications and restores' copies share."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

from temporalio import workflow

from workflows.common import CONTROL_RETRY, raise_if_cancelled

with workflow.unsafe.imports_passed_through():
    from activities import budget as budget_activities
    from ec2backup.budget import COPY_SNAPSHOT
    from ec2backup.models.budget import BudgetLease, BudgetReleaseRequest, BudgetRequest

# How often a workflow waiting for a copy slot asks again (copies take minutes).
COPY_SLOT_WAIT = timedelta(seconds=10)
BUDGET_TIMEOUT = timedelta(minutes=2)


async def share_of(req: BudgetRequest) -> BudgetLease:
    """This workflow's share of one API's budget: one update of its RateBudget workflow,
    retried by CONTROL_RETRY when Temporal is slow to answer."""
    lease: BudgetLease = await workflow.execute_activity(
        budget_activities.acquire_budget,
        req,
        start_to_close_timeout=BUDGET_TIMEOUT,
        retry_policy=CONTROL_RETRY,
    )
    return lease


async def give_back(req: BudgetReleaseRequest) -> None:
    await workflow.execute_activity(
        budget_activities.release_budget,
        req,
        start_to_close_timeout=BUDGET_TIMEOUT,
        retry_policy=CONTROL_RETRY,
    )


async def copy_slots(
    holder: str,
    region: str,
    account_role_arn: str | None,
    want: int,
    waiting: Callable[[str], None],
) -> BudgetLease:
    """Slots of the destination's copy budget (ec2backup.budget.COPY_SNAPSHOT) for `want`
    copies: waits (a durable timer, `waiting` told why) while other workflows hold them all."""
    while True:
        lease = await share_of(
            BudgetRequest(
                account="",
                account_role_arn=account_role_arn,
                region=region,
                api=COPY_SNAPSHOT,
                holder=holder,
                want_rps=want,
            )
        )
        if lease.rps >= 1:
            return lease
        waiting(f"waiting for a copy slot in {region}")
        await workflow.sleep(COPY_SLOT_WAIT)
        raise_if_cancelled()


async def give_back_copy_slots(holder: str, region: str, lease: BudgetLease) -> None:
    await give_back(
        BudgetReleaseRequest(account=lease.account, region=region, api=COPY_SNAPSHOT, holder=holder)
    )

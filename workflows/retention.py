"""`Retention`: apply one policy's retention on its own (what `ec2backup policy retention` starts).

`BackupPolicy` runs the same activity after its sessions; this workflow is for an operator who
wants it now, or a dry run as of another date (`now`), without backing anything up.
"""

from __future__ import annotations

from datetime import UTC, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError

from workflows.common import (
    LIVENESS_TIMEOUT,
    authorize,
    ensure_search_attributes,
    guarded,
    outcome_on_failure,
    set_outcome,
)

with workflow.unsafe.imports_passed_through():
    from activities import policy as policy_activities
    from ec2backup.authorization import policy_request
    from ec2backup.models.policy import RetentionInput, RetentionOutput

# Deleting snapshots is quick; pruning a large repository rewrites packs and can take hours.
RETENTION_TIMEOUT = timedelta(hours=6)
# The activity heartbeats per Region and per prune step; prune reports progress per pack.
RETENTION_HEARTBEAT_TIMEOUT = LIVENESS_TIMEOUT
# `now` may run ahead of the server's clock by this much (a starter's clock skew) before it
# counts as the future.
FUTURE_NOW_TOLERANCE = timedelta(minutes=5)
RETENTION_RETRY = RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=2))


async def run_retention(req: RetentionInput) -> RetentionOutput:
    """The retention activity with `now` fixed by the workflow (deterministic on replay)."""
    if req.now is None:
        req = req.model_copy(update={"now": workflow.now()})
    result: RetentionOutput = await workflow.execute_activity(
        policy_activities.apply_retention,
        req,
        start_to_close_timeout=RETENTION_TIMEOUT,
        heartbeat_timeout=RETENTION_HEARTBEAT_TIMEOUT,
        retry_policy=RETENTION_RETRY,
    )
    return result


@workflow.defn(name="Retention")
class PolicyRetention:
    @workflow.run
    async def run(self, req: RetentionInput) -> RetentionOutput:
        ensure_search_attributes("retention", req.policy.name)
        with outcome_on_failure():
            if (
                guarded()
                and not req.dry_run
                and req.now is not None
                # a time without zone (plain JSON from `temporal workflow start`) is UTC
                and (req.now if req.now.tzinfo else req.now.replace(tzinfo=UTC))
                > workflow.now() + FUTURE_NOW_TOLERANCE
            ):
                # Retention as of a future date deletes what is not yet expired (all but each
                # instance's newest): only a dry run may ask "what would go then".
                raise ApplicationError(
                    f"Retention {req.policy.name}: now {req.now.isoformat()} is in the future; "
                    "only a dry run may look ahead",
                    type="FutureNow",
                    non_retryable=True,
                )
            await authorize(policy_request("Retention", req.policy))
            result = await run_retention(req)
        set_outcome("succeeded")
        return result

"""`Retention`: apply one policy's retention on its own (what `ec2backup policy retention` starts).

`BackupPolicy` runs the same activity after its sessions; this workflow is for an operator who
wants it now, or a dry run as of another date (`now`), without backing anything up.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.common import LIVENESS_TIMEOUT, ensure_search_attributes

with workflow.unsafe.imports_passed_through():
    from activities import policy as policy_activities
    from ec2backup.models.policy import RetentionInput, RetentionOutput

# Deleting snapshots is quick; pruning a large repository rewrites packs and can take hours.
RETENTION_TIMEOUT = timedelta(hours=6)
# The activity heartbeats per Region and per prune step; prune reports progress per pack.
RETENTION_HEARTBEAT_TIMEOUT = LIVENESS_TIMEOUT
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
        return await run_retention(req)

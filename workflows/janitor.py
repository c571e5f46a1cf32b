"""`Janitor`: sweep what closed (e.g. terminated) sessions left behind. Installed as the
schedule `ec2backup-janitor` by `ec2backup worker`; also startable by hand."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

from workflows.common import (
    authorize,
    ensure_search_attributes,
    guarded,
    outcome_on_failure,
    set_outcome,
)

with workflow.unsafe.imports_passed_through():
    from activities import janitor as janitor_activities
    from ec2backup.models.authorization import AuthorizeInput
    from ec2backup.models.janitor import JanitorInput, JanitorOutput

JANITOR_TIMEOUT = timedelta(minutes=30)


@workflow.defn(name="Janitor")
class Janitor:
    @workflow.run
    async def run(self, req: JanitorInput) -> JanitorOutput:
        if guarded():
            ensure_search_attributes("janitor", "")
        with outcome_on_failure():
            # It deletes (what the installation tagged): only in configured places.
            await authorize(
                AuthorizeInput(
                    workflow="Janitor",
                    regions=list(req.regions),
                    role_arns=[r for r in req.role_arns if r],
                )
            )
            result: JanitorOutput = await workflow.execute_activity(
                janitor_activities.janitor_sweep,
                req,
                start_to_close_timeout=JANITOR_TIMEOUT,
                heartbeat_timeout=timedelta(minutes=2),
                retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=1)),
            )
        # What it could not remove is retried by the next sweep; the run still did its part.
        set_outcome("partial" if result.failures else "succeeded")
        return result

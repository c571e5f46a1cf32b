"""`Janitor`: sweep what closed (e.g. terminated) sessions left behind. Installed as the
schedule `ec2backup-janitor` by `ec2backup worker`; also startable by hand."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from activities import janitor as janitor_activities
    from ec2backup.models.janitor import JanitorInput, JanitorOutput

JANITOR_TIMEOUT = timedelta(minutes=30)


@workflow.defn(name="Janitor")
class Janitor:
    @workflow.run
    async def run(self, req: JanitorInput) -> JanitorOutput:
        result: JanitorOutput = await workflow.execute_activity(
            janitor_activities.janitor_sweep,
            req,
            start_to_close_timeout=JANITOR_TIMEOUT,
            heartbeat_timeout=timedelta(minutes=2),
            retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(minutes=1)),
        )
        return result

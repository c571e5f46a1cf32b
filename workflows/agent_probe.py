"""`AgentProbe`: ask a worker instance's agent who it is, through its host task queue.

The backup session uses the same call to learn that a freshly provisioned worker has booted;
operators can run it from the CLI to check a host: `temporal workflow start --type AgentProbe`.
"""

from __future__ import annotations

from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow

from workflows.common import ensure_search_attributes, guarded, outcome_on_failure, set_outcome

with workflow.unsafe.imports_passed_through():
    from ec2backup.models.agent import DescribeHostInput, DescribeHostOutput
    from worker_agent import activities as agent_activities

# A worker boots in about a minute on EC2; past this the host is presumed lost.
AGENT_BOOT_TIMEOUT = timedelta(minutes=5)


class AgentProbeInput(BaseModel):
    task_queue: str


class AgentProbeOutput(BaseModel):
    host: DescribeHostOutput


@workflow.defn(name="AgentProbe")
class AgentProbe:
    @workflow.run
    async def run(self, req: AgentProbeInput) -> AgentProbeOutput:
        # No Region/AccountId: a host queue names neither, and the probe touches nothing.
        if guarded():
            ensure_search_attributes("probe", "")
        with outcome_on_failure():
            host = await workflow.execute_activity(
                agent_activities.describe_host,
                DescribeHostInput(),
                task_queue=req.task_queue,
                schedule_to_start_timeout=AGENT_BOOT_TIMEOUT,
                start_to_close_timeout=timedelta(minutes=1),
            )
        if guarded():
            ensure_search_attributes("probe", "", host.instance_id)
        set_outcome("succeeded")
        return AgentProbeOutput(host=host)

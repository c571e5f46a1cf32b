"""Policy activities: discover the instances a policy protects (task queue `ec2backup`)."""

from __future__ import annotations

import asyncio

from temporalio import activity

from activities.common import classify
from ec2backup import discovery, schedules
from ec2backup.models import DiscoveredInstance, DiscoverInput, DiscoverOutput
from ec2backup.policy import Policy


@activity.defn(name="discover_instances")
async def discover_instances(req: DiscoverInput) -> DiscoverOutput:
    try:
        policy = Policy.model_validate(req.policy)
        others = await schedules.all_policies(activity.client())
        targets, notes = await asyncio.to_thread(discovery.protected_by, policy, others)
    except Exception as exc:
        raise classify(exc) from exc
    return DiscoverOutput(
        instances=[
            DiscoveredInstance(
                instance_id=t.instance_id, region=t.region, account_role_arn=t.account_role_arn
            )
            for t in targets
        ],
        notes=notes,
    )

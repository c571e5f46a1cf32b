"""Policy activities: discover the instances a policy protects (task queue `ec2backup`)."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio import activity

from activities.common import classify
from ec2backup import discovery
from ec2backup.models import DiscoveredInstance, DiscoverInput, DiscoverOutput
from ec2backup.policy import Policy

POLICY_SCHEDULE_PREFIX = "ec2backup-policy-"


async def _other_policies() -> list[Policy]:
    """Every applied policy, read back from its schedule (the policies' only home)."""
    client = activity.client()
    policies = []
    async for listed in await client.list_schedules():
        if not listed.id.startswith(POLICY_SCHEDULE_PREFIX):
            continue
        desc = await client.get_schedule_handle(listed.id).describe()
        action: Any = desc.schedule.action
        raw = action.args[0] if action.args else None
        if raw is None:
            continue
        if not isinstance(raw, dict):
            (raw,) = await client.data_converter.decode([raw], [dict])
        try:
            policies.append(Policy.model_validate(raw))
        except ValueError:
            continue
    return policies


@activity.defn(name="discover_instances")
async def discover_instances(req: DiscoverInput) -> DiscoverOutput:
    try:
        policy = Policy.model_validate(req.policy)
        others = await _other_policies()
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

"""Policy activities (task queue `ec2backup`): discover the instances a policy protects, and
apply its retention (the rules are in `ec2backup.retention`)."""

from __future__ import annotations

import asyncio
import datetime as dt

from temporalio import activity

from ec2backup import discovery, installation, retention, schedules
from ec2backup.activity_support import adapter, classify, repository_password
from ec2backup.models.policy import (
    DiscoveredInstance,
    DiscoverInput,
    DiscoverOutput,
    RetentionInput,
    RetentionOutput,
)


@activity.defn(name="discover_instances")
async def discover_instances(req: DiscoverInput) -> DiscoverOutput:
    try:
        policy = req.policy
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


@activity.defn(name="apply_retention")
@adapter
def apply_retention(req: RetentionInput) -> RetentionOutput:
    policy = req.policy
    password = (
        repository_password(policy.image_backup.repository)
        if policy.image_backup is not None
        else None
    )
    return retention.apply(
        policy,
        req.now or dt.datetime.now(dt.UTC),
        installation.installation_key(),
        password,
        dry_run=req.dry_run,
        progress=activity.heartbeat,
    )

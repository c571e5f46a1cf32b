"""Policy activities (task queue `ec2backup`): discover the instances a policy protects, and
apply its retention (the rules are in `ec2backup.retention`)."""

from __future__ import annotations

import asyncio
import datetime as dt

from temporalio import activity

from ec2backup import (
    authorization,
    aws,
    config,
    discovery,
    installation,
    notify,
    reaction,
    retention,
    schedules,
)
from ec2backup.activity_support import adapter, classify, repository_password
from ec2backup.models.authorization import AuthorizeInput, AuthorizeOutput
from ec2backup.models.policy import (
    DiscoveredInstance,
    DiscoverInput,
    DiscoverOutput,
    LockLastCleanInput,
    LockLastCleanOutput,
    NotifyAnomalyInput,
    NotifyAnomalyOutput,
    NotifyInput,
    NotifyOutput,
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


@activity.defn(name="authorize_request")
@adapter
def authorize_request(req: AuthorizeInput) -> AuthorizeOutput:
    """What a workflow is asked to touch, against the installation configuration's
    allow-list (ec2backup.authorization); NotAuthorized (non-retryable) names the value."""
    home = installation.home_region()
    decision = authorization.authorize(
        config.load(),
        what=req.workflow,
        home_region=home,
        backup_account_id=aws.caller_account(home),
        regions=req.regions,
        role_arns=req.role_arns,
        account_ids=req.account_ids,
        repositories=req.repositories,
    )
    if not decision.enforced:
        activity.logger.warning(
            "%s: the installation configuration names no Regions, accounts or repositories: "
            "every value is allowed (docs/deploy.md, authorization)",
            req.workflow,
        )
    return AuthorizeOutput(
        enforced=decision.enforced, regions=decision.regions, account_ids=decision.account_ids
    )


@activity.defn(name="notify_policy_run")
@adapter
def notify_policy_run(req: NotifyInput) -> NotifyOutput:
    """One SNS message with the run's summary (policy `notify`). At least once: a retry after
    a publish whose answer was lost sends the summary twice (standard topics do not dedupe)."""
    message_id = notify.publish(req.topic_arn, req.outcome, req.run_id, req.report)
    activity.logger.info(
        "published the %s summary of %s to %s", req.outcome, req.run_id, req.topic_arn
    )
    return NotifyOutput(message_id=message_id)


@activity.defn(name="lock_last_clean")
@adapter
def lock_last_clean(req: LockLastCleanInput) -> LockLastCleanOutput:
    """`on_anomaly: lock-last-clean`: the flagged instance's last clean restore point is kept
    and locked (ec2backup.reaction)."""
    assert req.policy.image_backup is not None
    return reaction.lock_last_clean(
        req.policy,
        req.instance,
        req.now,
        repository_password(req.policy.image_backup.repository),
    )


@activity.defn(name="notify_anomaly")
@adapter
def notify_anomaly(req: NotifyAnomalyInput) -> NotifyAnomalyOutput:
    """`on_anomaly: notify`: one SNS message for a flagged instance."""
    message_id = reaction.publish_anomaly(
        req.topic_arn, req.policy, req.run_id, req.instance, req.held
    )
    activity.logger.info(
        "published the anomaly of %s (%s) to %s",
        req.instance.instance_id,
        req.run_id,
        req.topic_arn,
    )
    return NotifyAnomalyOutput(message_id=message_id)

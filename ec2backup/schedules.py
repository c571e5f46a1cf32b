"""Policies live in Temporal Schedules: `ec2backup-policy-<name>` starts `BackupPolicy` with
the policy as its input; a policy with an `archive` section also has `ec2backup-archive-<name>`
starting `ArchivePolicy` on the archive's own schedule. Applying is idempotent: an unchanged
policy changes nothing."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode

from ec2backup.errors import NotFoundError
from ec2backup.policy import Policy
from ec2backup.policy import Schedule as PolicySchedule
from ec2backup.temporal import TASK_QUEUE, search_attributes

SCHEDULE_PREFIX = "ec2backup-policy-"
ARCHIVE_SCHEDULE_PREFIX = "ec2backup-archive-"


def archive_schedule_id(name: str) -> str:
    return ARCHIVE_SCHEDULE_PREFIX + name


def build_archive_schedule(policy: Policy) -> Schedule:
    assert policy.archive is not None
    return _schedule(
        policy, "ArchivePolicy", f"archive-{policy.name}", "archive", policy.archive.schedule
    )


async def _sync_archive(client: Client, policy: Policy) -> None:
    """Create, update or delete the archive schedule to match the policy."""
    handle = client.get_schedule_handle(archive_schedule_id(policy.name))
    exists = await archive_schedule_exists(client, policy.name)
    if policy.archive is None:
        if exists:
            await handle.delete()
        return
    schedule = build_archive_schedule(policy)
    if not exists:
        await client.create_schedule(archive_schedule_id(policy.name), schedule)
        return

    def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    await handle.update(update)


async def archive_schedule_exists(client: Client, name: str) -> bool:
    try:
        await client.get_schedule_handle(archive_schedule_id(name)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return False
        raise
    return True


def schedule_id(name: str) -> str:
    return SCHEDULE_PREFIX + name


def build_schedule(policy: Policy) -> Schedule:
    return _schedule(policy, "BackupPolicy", f"policy-{policy.name}", "policy", policy.schedule)


def _schedule(
    policy: Policy, workflow: str, workflow_id: str, kind: str, when: PolicySchedule
) -> Schedule:
    """A schedule starting `workflow` with the policy as input at the times of `when`."""
    return Schedule(
        action=ScheduleActionStartWorkflow(
            workflow,
            policy.model_dump(mode="json"),
            id=workflow_id,
            task_queue=TASK_QUEUE,
            typed_search_attributes=search_attributes(kind, policy.name),
        ),
        spec=ScheduleSpec(cron_expressions=when.cron_expressions(), time_zone_name=when.time_zone),
        # A run still going when the next is due: skip the new one (no overlapping runs).
        # A missed run (outage) is still started within the backup window, not later.
        policy=SchedulePolicy(
            overlap=ScheduleOverlapPolicy.SKIP,
            catchup_window=timedelta(minutes=when.window_minutes),
        ),
        state=ScheduleState(paused=not policy.enabled, note="managed by `ec2backup policy apply`"),
    )


async def _policy_of(client: Client, desc: Any) -> Policy:
    """The policy a schedule runs: its action's argument, decoded if it came back raw."""
    raw = desc.schedule.action.args[0]
    if not isinstance(raw, dict):
        (raw,) = await client.data_converter.decode([raw], [dict])
    return Policy.model_validate(raw)


async def current_policy(client: Client, name: str) -> Policy | None:
    try:
        desc = await client.get_schedule_handle(schedule_id(name)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return await _policy_of(client, desc)


async def all_policies(client: Client) -> list[Policy]:
    """Every applied policy, read back from its schedule (the policies' only home); a schedule
    whose argument is no longer a valid policy is skipped."""
    policies = []
    async for listed in await client.list_schedules():
        if not listed.id.startswith(SCHEDULE_PREFIX):
            continue
        desc = await client.get_schedule_handle(listed.id).describe()
        try:
            policies.append(await _policy_of(client, desc))
        except (ValueError, IndexError):
            continue
    return policies


async def apply(client: Client, policy: Policy) -> str:
    """Create or update the policy's schedule: 'created', 'updated' or 'unchanged'."""
    existing = await current_policy(client, policy.name)
    if existing == policy:
        return "unchanged"
    schedule = build_schedule(policy)
    # The archive schedule first: if it fails, the policy's own schedule (what `unchanged` is
    # judged by) is not yet updated, so a rerun of apply retries both.
    await _sync_archive(client, policy)
    if existing is None:
        await client.create_schedule(schedule_id(policy.name), schedule)
        return "created"

    def update(_: ScheduleUpdateInput) -> ScheduleUpdate:
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(schedule_id(policy.name)).update(update)
    return "updated"


async def require(client: Client, name: str) -> Policy:
    policy = await current_policy(client, name)
    if policy is None:
        raise NotFoundError(f"policy {name} is not applied (no schedule {schedule_id(name)})")
    return policy


async def list_policies(client: Client) -> list[dict[str, Any]]:
    rows = []
    async for listed in await client.list_schedules():
        if not listed.id.startswith(SCHEDULE_PREFIX):
            continue
        desc = await client.get_schedule_handle(listed.id).describe()
        nxt = desc.info.next_action_times[:1]
        recent = desc.info.recent_actions[-1:] if desc.info.recent_actions else []
        rows.append(
            {
                "name": listed.id.removeprefix(SCHEDULE_PREFIX),
                "paused": desc.schedule.state.paused,
                "next_run": nxt[0].isoformat() if nxt else None,
                "last_run": recent[0].started_at.isoformat() if recent else None,
                "running": len(desc.info.running_actions),
            }
        )
    return sorted(rows, key=lambda r: r["name"])

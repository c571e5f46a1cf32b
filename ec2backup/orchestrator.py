"""`ec2backup worker`: the orchestrator, polling task queue `ec2backup` for workflows and
control-plane activities. Any number may run; they share nothing but Temporal and AWS."""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from temporalio.api.common.v1 import Payload
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleIntervalSpec,
    SchedulePolicy,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
)
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from activities import archive as archive_activities
from activities import budget as budget_activities
from activities import janitor as janitor_activities
from activities import policy as policy_activities
from activities import restore as restore_activities
from activities import session as session_activities
from ec2backup.activity_support import HEARTBEAT_THROTTLE
from ec2backup.models.janitor import JanitorInput
from ec2backup.temporal import TASK_QUEUE, connect
from workflows.agent_probe import AgentProbe
from workflows.archive import Archive
from workflows.archive_policy import ArchivePolicy
from workflows.backup_policy import BackupPolicy
from workflows.backup_session import BackupSession
from workflows.janitor import Janitor
from workflows.rate_budget import RateBudget
from workflows.restore import Restore
from workflows.retention import PolicyRetention

log = logging.getLogger("ec2backup.worker")

JANITOR_SCHEDULE_ID = "ec2backup-janitor"
JANITOR_INTERVAL = timedelta(minutes=15)
# Threads for sync (boto3) activities: they block on AWS, not on CPU.
ACTIVITY_THREADS = 16


def _janitor_schedule(regions: list[str], every: timedelta = JANITOR_INTERVAL) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            Janitor.run,
            JanitorInput(regions=regions),
            id=JANITOR_SCHEDULE_ID,
            task_queue=TASK_QUEUE,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=every)]),
        policy=SchedulePolicy(catchup_window=timedelta(minutes=30)),
        state=ScheduleState(note="sweeps what terminated backup sessions left behind"),
    )


async def janitor_schedule_state(client: Client) -> tuple[list[str], timedelta | None] | None:
    """The Janitor schedule's Regions and interval, or None when there is none."""
    handle = client.get_schedule_handle(JANITOR_SCHEDULE_ID)
    try:
        described = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    action = described.schedule.action
    current: list[str] = []
    if isinstance(action, ScheduleActionStartWorkflow) and action.args:
        first = action.args[0]
        if isinstance(first, Payload):  # described schedules carry their input encoded
            (decoded,) = await client.data_converter.decode([first], [JanitorInput])
            current = list(decoded.regions)
    intervals = described.schedule.spec.intervals
    return sorted(current), (intervals[0].every if intervals else None)


async def ensure_janitor_schedule(
    client: Client, regions: list[str], every: timedelta | None = None
) -> list[str]:
    """Create the janitor's schedule, or widen an existing one to these Regions too (every
    orchestrator adds its own; none removes another's) and, when `every` is given (setup,
    from the configuration), set its interval; returns the Regions it sweeps."""
    interval = every or JANITOR_INTERVAL
    try:
        await client.create_schedule(
            JANITOR_SCHEDULE_ID, _janitor_schedule(sorted(set(regions)), interval)
        )
        return sorted(set(regions))
    except ScheduleAlreadyRunningError:
        pass
    state = await janitor_schedule_state(client)
    current, current_every = state if state else ([], None)
    wanted = sorted(set(current) | set(regions))
    new_every = every if every is not None and every != current_every else None
    if wanted != sorted(current) or new_every is not None:
        replacement = _janitor_schedule(wanted, new_every or current_every or interval)

        def widen(update: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule = update.description.schedule  # its state (paused, note) stays as set
            schedule.action = replacement.action
            if new_every is not None:
                schedule.spec = replacement.spec
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(JANITOR_SCHEDULE_ID).update(widen)
    return wanted


async def run_worker(
    address: str | None, namespace: str | None, regions: list[str], install_schedules: bool = True
) -> None:
    client = await connect(address, namespace)
    if install_schedules:
        await ensure_janitor_schedule(client, regions)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(ACTIVITY_THREADS) as executor:
        worker = Worker(
            client,
            task_queue=TASK_QUEUE,
            workflows=[
                BackupSession,
                BackupPolicy,
                Janitor,
                AgentProbe,
                Restore,
                PolicyRetention,
                Archive,
                ArchivePolicy,
                RateBudget,
            ],
            activities=[
                *session_activities.ALL,
                *restore_activities.ALL,
                *archive_activities.ALL,
                *budget_activities.ALL,
                janitor_activities.janitor_sweep,
                policy_activities.discover_instances,
                policy_activities.apply_retention,
                policy_activities.authorize_request,
                policy_activities.notify_policy_run,
                policy_activities.lock_last_clean,
                policy_activities.notify_anomaly,
            ],
            activity_executor=executor,
            max_concurrent_activities=ACTIVITY_THREADS,
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            graceful_shutdown_timeout=timedelta(seconds=5),
        )
        print(f"orchestrator polling task queue {TASK_QUEUE}", flush=True)
        async with worker:
            await stop.wait()

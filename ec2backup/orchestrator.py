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
from temporalio.worker import Worker

from activities import archive as archive_activities
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
from workflows.restore import Restore
from workflows.retention import PolicyRetention

log = logging.getLogger("ec2backup.worker")

JANITOR_SCHEDULE_ID = "ec2backup-janitor"
JANITOR_INTERVAL = timedelta(minutes=15)
# Threads for sync (boto3) activities: they block on AWS, not on CPU.
ACTIVITY_THREADS = 16


def _janitor_schedule(regions: list[str]) -> Schedule:
    return Schedule(
        action=ScheduleActionStartWorkflow(
            Janitor.run,
            JanitorInput(regions=regions),
            id=JANITOR_SCHEDULE_ID,
            task_queue=TASK_QUEUE,
        ),
        spec=ScheduleSpec(intervals=[ScheduleIntervalSpec(every=JANITOR_INTERVAL)]),
        policy=SchedulePolicy(catchup_window=timedelta(minutes=30)),
        state=ScheduleState(note="sweeps what terminated backup sessions left behind"),
    )


async def ensure_janitor_schedule(client: Client, regions: list[str]) -> list[str]:
    """Create the janitor's schedule, or widen an existing one to these Regions too (every
    orchestrator adds its own; none removes another's); returns the Regions it sweeps."""
    try:
        await client.create_schedule(JANITOR_SCHEDULE_ID, _janitor_schedule(sorted(set(regions))))
        return sorted(set(regions))
    except ScheduleAlreadyRunningError:
        pass
    handle = client.get_schedule_handle(JANITOR_SCHEDULE_ID)
    action = (await handle.describe()).schedule.action
    current: list[str] = []
    if isinstance(action, ScheduleActionStartWorkflow) and action.args:
        first = action.args[0]
        if isinstance(first, Payload):  # described schedules carry their input encoded
            (decoded,) = await client.data_converter.decode([first], [JanitorInput])
            current = list(decoded.regions)
    wanted = sorted(set(current) | set(regions))
    if wanted != sorted(current):
        action = _janitor_schedule(wanted).action

        def widen(update: ScheduleUpdateInput) -> ScheduleUpdate:
            schedule = update.description.schedule  # its state (paused, note) stays as set
            schedule.action = action
            return ScheduleUpdate(schedule=schedule)

        await handle.update(widen)
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
            ],
            activities=[
                *session_activities.ALL,
                *restore_activities.ALL,
                *archive_activities.ALL,
                janitor_activities.janitor_sweep,
                policy_activities.discover_instances,
                policy_activities.apply_retention,
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

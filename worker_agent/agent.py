"""The worker agent process: a Temporal worker on its host's own task queue."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.worker import Worker

from ec2backup.activity_support import HEARTBEAT_THROTTLE
from ec2backup.temporal import connect
from worker_agent import activities
from worker_agent.devices import flush_io

log = logging.getLogger("ec2backup.agent")

# Instance metadata (IMDSv2) on EC2, for the `{instance_id}` in the task queue name.
# EC2's instance metadata service; AWS_EC2_METADATA_SERVICE_ENDPOINT (botocore's variable)
# points elsewhere, as the lab does for instances it boots for real.
IMDS_URL = "http://169.254.169.254/"
# Concurrent activities per host: one transfer range per attached volume copy plus control.
MAX_CONCURRENT_ACTIVITIES = 8
# On SIGTERM (instance shutdown) running activities get this long to heartbeat and stop.
GRACEFUL_SHUTDOWN_SECONDS = 5


def instance_id() -> str:
    from_env = os.environ.get("EC2BACKUP_INSTANCE_ID")
    if from_env:
        return from_env
    base = (os.environ.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or IMDS_URL).rstrip("/")
    token_req = urllib.request.Request(
        f"{base}/latest/api/token",
        method="PUT",
        headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"},
    )
    with urllib.request.urlopen(token_req, timeout=2) as r:
        token = r.read().decode()
    id_req = urllib.request.Request(
        f"{base}/latest/meta-data/instance-id", headers={"X-aws-ec2-metadata-token": token}
    )
    with urllib.request.urlopen(id_req, timeout=2) as r:
        return str(r.read().decode())


async def run_agent(
    task_queue: str,
    address: str | None,
    namespace: str | None,
    overrides: dict[str, Any] | None = None,
) -> None:
    if "{instance_id}" in task_queue:
        task_queue = task_queue.replace("{instance_id}", instance_id())
    client = await connect(address, namespace, overrides)
    activities.AGENT_CLIENT = client
    activities.AGENT_LOOP = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    with ThreadPoolExecutor(MAX_CONCURRENT_ACTIVITIES) as executor:
        worker = Worker(
            client,
            task_queue=task_queue,
            activities=list(activities.ALL),
            activity_executor=executor,
            max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
            max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
            graceful_shutdown_timeout=timedelta(seconds=GRACEFUL_SHUTDOWN_SECONDS),
        )
        log.info("agent polling task queue %s", task_queue)
        print(f"agent polling task queue {task_queue}", flush=True)
        async with worker:
            await stop.wait()
    flush_io()

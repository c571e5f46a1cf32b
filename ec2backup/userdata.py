"""The user-data that turns a plain EC2 instance into an ec2backup worker.

The provisioning activity renders it; the instance's cloud-init runs it; the lab recognises it
and starts the same command as a local process. The agent's task queue is per instance, so the
command carries the literal `{instance_id}` placeholder, which the agent fills in from instance
metadata (IMDS on EC2, `EC2BACKUP_INSTANCE_ID` in the lab). No secret ever appears here:
user-data is readable by anyone who can describe the instance.
"""

from __future__ import annotations

import shlex

AGENT_MARKER = "# ec2backup-worker-agent v1"
HOST_TASK_QUEUE_TEMPLATE = "ec2backup-host-{instance_id}"


def render_agent_user_data(
    temporal_address: str, namespace: str = "default", task_queue: str = HOST_TASK_QUEUE_TEMPLATE
) -> str:
    args = [
        "ec2backup",
        "agent",
        "--task-queue",
        task_queue,
        "--temporal-address",
        temporal_address,
        "--namespace",
        namespace,
    ]
    return "\n".join(
        [
            "#!/bin/bash",
            AGENT_MARKER,
            "set -euo pipefail",
            "exec " + shlex.join(args),
            "",
        ]
    )


def parse_agent_command(user_data: str) -> list[str] | None:
    """The agent's argv (after `ec2backup`) if this user-data starts a worker agent."""
    if AGENT_MARKER not in user_data:
        return None
    for line in user_data.splitlines():
        words = shlex.split(line)
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:2] == ["ec2backup", "agent"]:
            return words[1:]
    return None

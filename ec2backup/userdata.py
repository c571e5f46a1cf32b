"""The user-data that turns a stock EC2 instance into an ec2backup worker.

The provisioning activity renders it; the instance's cloud-init runs it as root at first
boot. It

1. schedules the power-off at the worker's maximum lifetime (`shutdown -h +N`): the instance
   is launched with shutdown behaviour `terminate`, so a worker whose orchestrator is gone
   (an outage, a lost session) disappears by itself instead of running for ever with access
   to the repository;
2. installs the agent, when a wheelhouse is configured, into `/opt/ec2backup` (a Python 3.11
   virtualenv; Amazon Linux 2023 ships 3.9 and packages 3.11) from the wheelhouse that
   `ec2backup worker-image publish` uploads (offline: `--no-index`); without one, the image
   must already have `/opt/ec2backup/bin/ec2backup` (a pre-built AMI: docs/deploy.md);
3. starts the agent under systemd (`Restart=always`), on its own task queue.

The agent's command carries the literal `{instance_id}` placeholder in its task queue, which
the agent fills in from instance metadata (IMDSv2 on EC2, `EC2BACKUP_INSTANCE_ID` in the
lab). No secret ever appears here: user-data is readable by anyone who can describe the
instance. The agent's Temporal credentials, when the cluster needs any, come from a Secrets
Manager secret it reads with its instance role (`--credentials-secret` names it).

Every path is under `$ROOT`, empty on EC2: the lab runs the script for real in a sandbox
root (`EC2BACKUP_ROOT`) when it installs from a wheelhouse; otherwise it recognises the marker
and starts the `ExecStart` command as a local process (`parse_agent_command`).
"""

from __future__ import annotations

import shlex

AGENT_MARKER = "# ec2backup-worker-agent v2"
# Earlier workers' user-data (a bare `exec ec2backup agent ...`): still recognised.
LEGACY_MARKERS = ("# ec2backup-worker-agent v1",)
HOST_TASK_QUEUE_TEMPLATE = "ec2backup-host-{instance_id}"
AGENT_PREFIX = "/opt/ec2backup"
AGENT_UNIT = "ec2backup-agent.service"
# The wheelhouse is fetched to this directory; pip installs from it without any index.
WHEELHOUSE_DIR = "/var/lib/ec2backup/wheelhouse"


def agent_argv(
    temporal_address: str,
    namespace: str = "default",
    task_queue: str = HOST_TASK_QUEUE_TEMPLATE,
    credentials_secret: str | None = None,
    credentials_region: str | None = None,
    session_secret: str | None = None,
    session_secret_region: str | None = None,
) -> list[str]:
    """`ec2backup agent ...` as the worker runs it (after the program name)."""
    args = [
        "agent",
        "--task-queue",
        task_queue,
        "--temporal-address",
        temporal_address,
        "--namespace",
        namespace,
    ]
    if credentials_secret:
        args += ["--credentials-secret", credentials_secret]
        if credentials_region:
            args += ["--credentials-region", credentials_region]
    if session_secret:
        # its payload keys (ec2backup.payloads): the secret's name, never its value
        args += ["--session-secret", session_secret]
        if session_secret_region:
            args += ["--session-secret-region", session_secret_region]
    return args


def render_agent_user_data(
    temporal_address: str,
    namespace: str = "default",
    task_queue: str = HOST_TASK_QUEUE_TEMPLATE,
    *,
    max_lifetime_minutes: int | None = None,
    wheelhouse_url: str | None = None,
    credentials_secret: str | None = None,
    credentials_region: str | None = None,
    session_secret: str | None = None,
    session_secret_region: str | None = None,
) -> str:
    argv = agent_argv(
        temporal_address,
        namespace,
        task_queue,
        credentials_secret,
        credentials_region,
        session_secret,
        session_secret_region,
    )
    exec_start = shlex.join([f"{AGENT_PREFIX}/bin/ec2backup", *argv])
    lines = [
        "#!/bin/bash",
        AGENT_MARKER,
        "set -euo pipefail",
        'ROOT="${EC2BACKUP_ROOT:-}"  # empty on EC2; the lab runs this in a sandbox root',
    ]
    if max_lifetime_minutes:
        lines += [
            "# the worker's maximum lifetime: power off (shutdown behaviour: terminate)",
            f"shutdown -h +{int(max_lifetime_minutes)} 'ec2backup worker: maximum lifetime'",
        ]
    if wheelhouse_url:
        lines += [
            "# the agent, from the installation's wheelhouse (no package index)",
            "dnf install -y -q python3.11",
            f'mkdir -p "$ROOT{WHEELHOUSE_DIR}"',
            f"aws s3 cp --recursive --only-show-errors {shlex.quote(wheelhouse_url)} "
            f'"$ROOT{WHEELHOUSE_DIR}"',
            f'python3.11 -m venv "$ROOT{AGENT_PREFIX}"',
            f'"$ROOT{AGENT_PREFIX}/bin/pip" install -q --no-index --find-links '
            f'"$ROOT{WHEELHOUSE_DIR}" ec2backup',
        ]
    lines += [
        'mkdir -p "$ROOT/etc/systemd/system"',
        # unquoted: $ROOT expands (the unit holds no other `$`)
        f'cat > "$ROOT/etc/systemd/system/{AGENT_UNIT}" <<UNIT',
        "[Unit]",
        "Description=ec2backup worker agent",
        "Wants=network-online.target",
        "After=network-online.target",
        "[Service]",
        # systemd unit files treat % as a specifier: the `{instance_id}` placeholder has none
        f"ExecStart=${{ROOT}}{exec_start}",
        "Restart=always",
        "RestartSec=5",
        "[Install]",
        "WantedBy=multi-user.target",
        "UNIT",
        "systemctl daemon-reload",
        f"systemctl enable --now {AGENT_UNIT}",
        "",
    ]
    return "\n".join(lines)


def parse_agent_command(user_data: str) -> list[str] | None:
    """The agent's argv (after `ec2backup`) if this user-data starts a worker agent."""
    if AGENT_MARKER not in user_data and not any(m in user_data for m in LEGACY_MARKERS):
        return None
    for line in user_data.splitlines():
        if line.startswith("ExecStart="):
            words = shlex.split(line.removeprefix("ExecStart="))
            if words and words[0].endswith("/ec2backup"):
                return words[1:]
        words = shlex.split(line) if line and not line.startswith("#") else []
        if words[:1] == ["exec"]:
            words = words[1:]
        if words[:2] == ["ec2backup", "agent"]:
            return words[1:]
    return None


def max_lifetime_minutes(user_data: str) -> int | None:
    """The lifetime the script schedules (`shutdown -h +N`), for the lab to honour."""
    for line in user_data.splitlines():
        words = line.split()
        if words[:2] == ["shutdown", "-h"] and len(words) > 2 and words[2].startswith("+"):
            return int(words[2][1:])
    return None

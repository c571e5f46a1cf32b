"""Worker instances "boot": the lab runs their user-data's agent as a local process.

The agent gets what a real worker would get from its instance: an instance id, credentials of
its instance role (assumed-role keys of the instance's account), its Region, and block devices
(here the directory of device links `<lab>/instances/<id>/devices/`). Terminating or stopping
the instance stops the process; `lab kill-instance` kills it without warning, like a lost host.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from ec2backup.userdata import parse_agent_command
from ec2backup_lab import bootstrap, firstread
from ec2backup_lab import imds as lab_imds
from ec2backup_lab import secrets as lab_secrets
from ec2backup_lab import sts as lab_sts
from ec2backup_lab.baseline import WORKER_ROLE_NAME
from ec2backup_lab.runtime import get_runtime

log = logging.getLogger("ec2backup_lab.agents")

# Seconds a terminated instance's agent gets to stop cleanly before it is killed (EC2 gives
# an ACPI shutdown; the agent drains its heartbeats).
AGENT_STOP_GRACE_SECONDS = 5.0

_procs: dict[str, subprocess.Popen[bytes]] = {}
_booting: set[str] = set()  # instances running their user-data (the real boot)
_lock = threading.Lock()


def _user_data_text(instance: Any) -> str:
    raw = instance.user_data
    if raw is None:
        return ""
    if isinstance(raw, list):
        raw = raw[0] if raw else ""
    text = getattr(raw, "encoded_string", raw)
    if not isinstance(text, str):
        text = str(text)
    try:
        return base64.b64decode(text).decode("utf-8", "replace")
    except ValueError:
        return text


def _role_credentials(account_id: str, region: str, instance_id: str) -> dict[str, str]:
    from moto.sts.models import sts_backends

    sts = sts_backends[account_id]["aws"]
    role = sts.assume_role(
        region_name=region,
        role_session_name="ec2backup-worker",
        role_arn=f"arn:aws:iam::{account_id}:role/{WORKER_ROLE_NAME}",
        policy="",
        duration=43200,
        external_id="",
    )
    # EC2's instance metadata service renews instance-role credentials; the lab hands them to
    # the agent once, so they must not expire like a role session.
    lab_sts.exempt(role.access_key_id)
    # requests signed with them carry ec2:SourceInstanceARN (resource policies use it)
    lab_secrets.record_instance_keys(
        role.access_key_id, f"arn:aws:ec2:{region}:{account_id}:instance/{instance_id}"
    )
    return {
        "AWS_ACCESS_KEY_ID": role.access_key_id,
        "AWS_SECRET_ACCESS_KEY": role.secret_access_key,
        "AWS_SESSION_TOKEN": role.session_token,
    }


def maybe_start(backend: Any, instance: Any, boot_seconds: float = 0.0) -> None:
    """Boot the instance's agent if its user-data starts one: `boot_seconds` later (the
    timing model's boot: EC2 and the OS until cloud-init runs the user-data), in the
    background; at once without it."""
    # every instance has its metadata (IMDSv2), whatever it runs
    credentials = _role_credentials(backend.account_id, backend.region_name, instance.id)
    lab_imds.register(
        lab_imds.Metadata(
            instance_id=instance.id,
            region=backend.region_name,
            zone=instance._placement.zone or f"{backend.region_name}a",
            role_name=WORKER_ROLE_NAME,
            credentials=credentials,
        )
    )
    user_data = _user_data_text(instance)
    argv = parse_agent_command(user_data)
    if argv is None:
        return
    runtime = get_runtime()
    inst_dir = runtime.root / "instances" / instance.id
    inst_dir.mkdir(parents=True, exist_ok=True)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EC2BACKUP_", "TEMPORAL_"))
    }
    env.update(credentials)
    env.update(
        {
            "AWS_ENDPOINT_URL": runtime.endpoint_url,
            "AWS_DEFAULT_REGION": backend.region_name,
            "EC2BACKUP_INSTANCE_ID": instance.id,
            "EC2BACKUP_DEVICE_DIR": str(inst_dir / "devices"),
            "EC2BACKUP_AGENT_IO_FILE": str(inst_dir / "agent-io.json"),
            "EC2BACKUP_LAB_URL": runtime.endpoint_url,
        }
    )
    if runtime.timing.timing:
        # The first-read model of volumes from snapshots runs in the agent (firstread.py):
        # its interpreter imports `<lab>/agent-site/sitecustomize.py` at start-up.
        site = firstread.write_agent_site(runtime.root)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH")) if p)
    if boot_seconds > 0:
        # Booting: `stop` (terminate, stop) takes it out of `_booting`, and then it never starts.
        with _lock:
            _booting.add(instance.id)
        timer = threading.Timer(
            boot_seconds,
            _boot,
            args=(instance.id, user_data, inst_dir, env, credentials, argv, True),
        )
        timer.daemon = True
        timer.start()
        return
    _boot(instance.id, user_data, inst_dir, env, credentials, argv, False)


def _boot(
    instance_id: str,
    user_data: str,
    inst_dir: Path,
    env: dict[str, str],
    credentials: dict[str, str],
    argv: list[str],
    delayed: bool,
) -> None:
    runtime = get_runtime()
    with _lock:
        if delayed and instance_id not in _booting:
            return  # stopped or terminated during the modelled boot
        _booting.add(instance_id)
    if bootstrap.installs_from_wheelhouse(user_data):
        # The real boot: the user-data runs in a sandbox root and installs the agent; its
        # unit's command is then started, as systemd would (the fast path below skips that).
        # Like on EC2, it knows nothing but its instance metadata (IMDSv2 only): no keys, id
        # or Region in its environment.
        booted_env = {
            k: v
            for k, v in env.items()
            if k not in (*credentials, "AWS_DEFAULT_REGION", "EC2BACKUP_INSTANCE_ID")
        }
        booted_env["AWS_EC2_METADATA_SERVICE_ENDPOINT"] = (
            f"{runtime.endpoint_url}/_lab/imds/{instance_id}/"
        )
        threading.Thread(
            target=bootstrap.boot,
            args=(instance_id, user_data, inst_dir, booted_env, _spawn_booted),
            daemon=True,
            name=f"boot-{instance_id}",
        ).start()
        return
    _spawn_booted(instance_id, inst_dir, [sys.executable, "-m", "ec2backup.cli", *argv], env)


def _spawn_booted(
    instance_id: str, inst_dir: Path, command: list[str], env: dict[str, str]
) -> None:
    with _lock:
        if instance_id not in _booting:  # terminated while it booted
            return
        _booting.discard(instance_id)
    _spawn(instance_id, inst_dir, command, env)


def _spawn(instance_id: str, inst_dir: Path, command: list[str], env: dict[str, str]) -> None:
    log_file = open(inst_dir / "agent.log", "ab")  # noqa: SIM115 - owned by the process
    proc = subprocess.Popen(
        command,
        env=env,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        cwd=inst_dir,
        start_new_session=True,
    )
    log_file.close()
    with _lock:
        _procs[instance_id] = proc
    (inst_dir / "agent.pid").write_text(str(proc.pid))
    (inst_dir / "agent.cmd").write_text(shlex.join(command))
    # what the agent was given (names only: no secret lands in a file)
    (inst_dir / "agent.env").write_text("\n".join(sorted(env)) + "\n")
    log.info("instance %s booted its agent (pid %s)", instance_id, proc.pid)


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


def stop(instance_id: str, kill: bool = False) -> bool:
    """Stop an instance's agent; `kill` = SIGKILL at once (a lost host). True if one ran."""
    with _lock:
        _booting.discard(instance_id)
        proc = _procs.pop(instance_id, None)
    if proc is None:
        return False
    if kill:
        _signal_group(proc, signal.SIGKILL)
        proc.wait()
        return True
    _signal_group(proc, signal.SIGTERM)

    def _reap() -> None:
        try:
            proc.wait(timeout=AGENT_STOP_GRACE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
            proc.wait()

    _reap()
    return True


def running() -> dict[str, int]:
    """Instance id -> pid of every live agent process."""
    with _lock:
        return {iid: p.pid for iid, p in _procs.items() if p.poll() is None}


def stop_all() -> None:
    for instance_id in list(running()):
        stop(instance_id)
    with _lock:
        _procs.clear()

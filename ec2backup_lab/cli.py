"""`ec2backup lab ...`: start/stop the lab and drive its control API."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import typer

from ec2backup.errors import UserError
from ec2backup_lab import manager

lab_app = typer.Typer(help="The local AWS lab with real block data.", no_args_is_help=True)

DirOption = typer.Option(None, "--dir", help="Lab directory (default $EC2BACKUP_LAB_DIR or .lab)")


def call(lab_dir: Path | None, method: str, path: str, body: Any = None) -> Any:
    """Call the lab control API; its JSON errors become one-line user errors."""
    url = f"{manager.lab_url(lab_dir)}/_lab/{path}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=600) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("error", exc.reason)
        except ValueError:
            message = exc.reason
        raise UserError(str(message)) from None
    except urllib.error.URLError as exc:
        raise UserError(f"cannot reach the lab at {url}: {exc.reason}") from None


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2))


@lab_app.command()
def up(
    lab_dir: Path = DirOption,
    detach: bool = typer.Option(False, "--detach", help="Return once the lab is ready"),
    aws_port: int = typer.Option(manager.DEFAULT_AWS_PORT, "--aws-port"),
    temporal_port: int = typer.Option(manager.DEFAULT_TEMPORAL_PORT, "--temporal-port"),
    ui_port: int = typer.Option(manager.DEFAULT_UI_PORT, "--ui-port"),
    snapshot_pending_seconds: float = typer.Option(
        None, "--snapshot-pending-seconds", help="How long new snapshots stay pending"
    ),
    role_session_seconds: float = typer.Option(
        None,
        "--role-session-seconds",
        help="Lifetime of AssumeRole credentials (default 3600, as AWS): after it, requests "
        "signed with them fail with ExpiredToken",
    ),
    start_snapshot_unknown_seconds: float = typer.Option(
        None,
        "--start-snapshot-unknown-seconds",
        help="How long a new EBS-direct snapshot is unknown to PutSnapshotBlock (default 2)",
    ),
    enforce_iam: bool = typer.Option(
        False,
        "--enforce-iam",
        help="Assumed roles may do only what their IAM policies allow (by action)",
    ),
    timing: bool = typer.Option(
        False,
        "--timing",
        help="AWS's timing: worker boot, volume create/attach, first reads of restored "
        "volumes, EBS direct latency and request quotas (docs/lab.md, Timing model)",
    ),
    timing_scale: float = typer.Option(
        None,
        "--timing-scale",
        help="Multiply every modelled delay by this (e.g. 0.1 for a compressed benchmark)",
    ),
) -> None:
    """Start the lab: a Temporal dev server and the lab AWS endpoint."""
    state, started = manager.up(
        lab_dir,
        aws_port,
        temporal_port,
        ui_port,
        snapshot_pending_seconds,
        role_session_seconds=role_session_seconds,
        start_snapshot_unknown_seconds=start_snapshot_unknown_seconds,
        enforce_iam=enforce_iam,
        timing=timing,
        timing_scale=timing_scale,
    )
    if not started:
        typer.echo(
            f"lab already running in {state.dir} (AWS {state.aws_url}, "
            f"Temporal {state.temporal_address}, Web UI {state.ui_url})"
        )
        return
    typer.echo(
        f"lab up in {state.dir}\n  AWS endpoint  {state.aws_url}\n"
        f"  Temporal      {state.temporal_address}\n  Web UI        {state.ui_url}\n"
        f'  environment   eval "$(ec2backup lab env --dir {state.dir})"'
    )
    if detach:
        return
    typer.echo("press Ctrl-C to stop")
    stop = False

    def _stop(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    while not stop and manager.running_state(Path(state.dir)) is not None:
        time.sleep(0.5)
    manager.down(Path(state.dir))
    typer.echo("lab stopped")


@lab_app.command()
def down(lab_dir: Path = DirOption) -> None:
    """Stop the lab's processes (its files stay; `up` starts afresh)."""
    if manager.down(lab_dir):
        typer.echo("lab stopped")
    else:
        typer.echo("no lab was running")


@lab_app.command()
def status(lab_dir: Path = DirOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Is the lab running, and where. Exits 1 when it is not."""
    resolved = manager.resolve_dir(lab_dir)
    state = manager.running_state(resolved)
    if as_json:
        _print_json(
            {
                "running": state is not None,
                "dir": str(resolved),
                **(
                    {
                        "aws_url": state.aws_url,
                        "temporal_address": state.temporal_address,
                        "ui_url": state.ui_url,
                    }
                    if state
                    else {}
                ),
            }
        )
    elif state is None:
        typer.echo(f"lab not running ({resolved})")
    else:
        typer.echo(
            f"lab running in {state.dir}: AWS {state.aws_url} (pid {state.aws_pid}), "
            f"Temporal {state.temporal_address} (pid {state.temporal_pid}), "
            f"Web UI {state.ui_url}"
        )
    if state is None:
        raise typer.Exit(1)


@lab_app.command()
def env(lab_dir: Path = DirOption) -> None:
    """Print `export` lines pointing AWS SDKs and Temporal clients at the lab."""
    state = manager.require_lab(lab_dir)
    for key, value in state.env().items():
        typer.echo(f"export {key}={value}")


def _parse_tags(tags: list[str]) -> dict[str, str]:
    parsed = {}
    for tag in tags:
        key, sep, value = tag.partition("=")
        if not sep or not key:
            raise UserError(f"--tag: expected KEY=VALUE, got '{tag}'")
        parsed[key] = value
    return parsed


@lab_app.command()
def seed(
    instances: int = typer.Option(1, "--instances", help="Number of instances"),
    volumes: int = typer.Option(1, "--volumes", help="Data volumes per instance"),
    size_gib: int = typer.Option(1, "--size-gib", help="Size of each data volume (GiB)"),
    region: str = typer.Option(manager.LAB_REGION, "--region"),
    account: str = typer.Option("123456789012", "--account"),
    tag: list[str] = typer.Option([], "--tag", help="KEY=VALUE, repeatable"),
    encryption: str = typer.Option("none", "--encryption", help="none|default-key|cmk"),
    fill: float = typer.Option(0.25, "--fill", help="Share of each volume holding data"),
    seed_value: int = typer.Option(1, "--seed", help="Content seed"),
    arch: str = typer.Option("x86_64", "--arch", help="x86_64|arm64 (instance type to match)"),
    boot_mode: str = typer.Option(
        None, "--boot-mode", help="uefi|legacy-bios (default: uefi on arm64, else legacy-bios)"
    ),
    instance_type: str = typer.Option(None, "--instance-type", help="Default: by --arch"),
    lab_dir: Path = DirOption,
) -> None:
    """Create running instances whose data volumes hold realistic content."""
    body = {
        "instances": instances,
        "volumes": volumes,
        "size_gib": size_gib,
        "region": region,
        "account": account,
        "tags": _parse_tags(tag),
        "encryption": encryption,
        "fill": fill,
        "seed": seed_value,
        "arch": arch,
        "boot_mode": boot_mode,
        "instance_type": instance_type,
    }
    _print_json(call(lab_dir, "POST", "seed", body))


@lab_app.command()
def churn(
    volume_id: str = typer.Argument(..., help="Volume to modify"),
    fraction: float = typer.Option(..., "--fraction", help="Share of the volume's blocks"),
    seed_value: int = typer.Option(1, "--seed"),
    zeros: bool = typer.Option(
        False,
        "--zeros",
        help="Write zeros over one contiguous region in the middle of the data instead "
        "(written blocks: ListSnapshotBlocks and ListChangedBlocks list them)",
    ),
    lab_dir: Path = DirOption,
) -> None:
    """Overwrite about FRACTION of a volume's blocks (deterministic for a seed)."""
    _print_json(
        call(
            lab_dir,
            "POST",
            "churn",
            {"volume_id": volume_id, "fraction": fraction, "seed": seed_value, "zeros": zeros},
        )
    )


@lab_app.command("encrypt-attack")
def encrypt_attack(
    volume_id: str = typer.Argument(..., help="Volume to attack", metavar="VOLUME"),
    fraction: float = typer.Option(
        ..., "--fraction", help="Share of the volume's blocks to encrypt (of those holding data)"
    ),
    seed_value: int = typer.Option(1, "--seed"),
    lab_dir: Path = DirOption,
) -> None:
    """Overwrite FRACTION of a volume's written blocks with random bytes, as ransomware
    encrypting files in place does (deterministic for a seed)."""
    _print_json(
        call(
            lab_dir,
            "POST",
            "encrypt-attack",
            {"volume_id": volume_id, "fraction": fraction, "seed": seed_value},
        )
    )


@lab_app.command()
def checksum(
    resource_id: str = typer.Argument(..., metavar="ID"), lab_dir: Path = DirOption
) -> None:
    """SHA-256 of the whole logical content of a volume or snapshot (zeros included)."""
    typer.echo(call(lab_dir, "GET", f"checksum/{resource_id}")["sha256"])


@lab_app.command()
def metrics(lab_dir: Path = DirOption) -> None:
    """JSON counters: API calls, blocks served, agent reads, instances, volumes."""
    _print_json(call(lab_dir, "GET", "metrics"))


@lab_app.command()
def fault(
    api: str = typer.Option(None, "--api", help="API action name, e.g. GetSnapshotBlock"),
    error: str = typer.Option(None, "--error", help="Error code to answer with"),
    times: int = typer.Option(1, "--times"),
    throttle: float = typer.Option(None, "--throttle", help="Max calls/s (of --api, or all)"),
    clear: bool = typer.Option(False, "--clear", help="Remove every injected fault"),
    lab_dir: Path = DirOption,
) -> None:
    """Inject API errors or throttling into the lab endpoint."""
    if clear:
        body: dict[str, Any] = {"clear": True}
    elif throttle is not None:
        body = {"throttle": throttle, "api": api}
    elif api and error:
        body = {"api": api, "error": error, "times": times}
    else:
        raise UserError("give --api NAME --error CODE [--times N], --throttle RATE, or --clear")
    _print_json(call(lab_dir, "POST", "fault", body))


@lab_app.command("kill-instance")
def kill_instance(instance_id: str = typer.Argument(...), lab_dir: Path = DirOption) -> None:
    """Kill an instance's agent process at once, like a lost host."""
    _print_json(call(lab_dir, "POST", "kill-instance", {"instance_id": instance_id}))


@lab_app.command()
def reset(lab_dir: Path = DirOption) -> None:
    """Wipe every account, Region and lab file (the processes keep running)."""
    _print_json(call(lab_dir, "POST", "reset", {}))


def lab_environ(lab_dir: Path | None = None) -> dict[str, str]:
    """os.environ plus the running lab's variables (for library callers such as the demo)."""
    return {**os.environ, **manager.require_lab(lab_dir).env()}

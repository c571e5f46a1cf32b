"""`make smoke-aws`: one backup and one restore against a real AWS account and a real Temporal.

Never run by CI, nor collected by pytest (the name is not `test_*`). It drives the `ec2backup`
CLI as an operator would and checks each exit code:

1. `ec2backup doctor` (informational: its findings are printed, the run goes on);
2. `ec2backup backup INSTANCE --region R [--repo URL] --wait`: a snapshot set, and with
   EC2BACKUP_SMOKE_REPO an image-level backup into that repository;
3. `ec2backup restore volume RP --source snapshot|backup --volume-id VOL --region R --wait`:
   the instance's smallest EBS volume, from the snapshot set (or from the repository's
   restore point when a repository was given);
4. the restored volume exists (DescribeVolumes), then it is deleted (EC2BACKUP_SMOKE_KEEP=1
   keeps it). The snapshot set and the restore point stay: they are ordinary backups, for
   retention to age out.

Environment:
  EC2BACKUP_SMOKE_INSTANCE_ID        the instance to back up (required)
  EC2BACKUP_SMOKE_REGION             its Region (required)
  EC2BACKUP_SMOKE_REPO               repository URL (optional: image-level backup and restore)
  EC2BACKUP_SMOKE_ACCOUNT_ROLE_ARN   role in the instance's account (optional; default: the
                                     account of the credentials)
  EC2BACKUP_SMOKE_KEEP               1: keep the restored volume
  EC2BACKUP_SMOKE_TIMEOUT_MINUTES    limit per step (default 120)
plus what every command reads: AWS credentials, TEMPORAL_* (or a temporal.toml profile),
EC2BACKUP_CONFIG, EC2BACKUP_REPO_PASSWORD. An orchestrator (`ec2backup worker`) must be
running against the same Temporal namespace, and `ec2backup setup` must have run.

It refuses to run (exit 2, one line) when a required variable is missing or an AWS endpoint
override (AWS_ENDPOINT_URL*, the lab) is set. Exit 1 when a step fails, 0 when all passed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# Run as `python tests/smoke_aws.py`, Python puts tests/ first on sys.path, where tests/ec2backup/
# (the tests' mirror of the package) would shadow the product: look in the repository root.
if sys.path and Path(sys.path[0] or ".").resolve() == HERE:
    sys.path[0] = str(ROOT)

REQUIRED = ("EC2BACKUP_SMOKE_INSTANCE_ID", "EC2BACKUP_SMOKE_REGION")
DEFAULT_TIMEOUT_MINUTES = 120


class StepFailed(Exception):
    pass


def refusal(env: dict[str, str]) -> str | None:
    """Why the smoke test must not run in this environment, or None."""
    overrides = sorted(k for k, v in env.items() if k.startswith("AWS_ENDPOINT_URL") and v)
    if overrides or env.get("EC2BACKUP_LAB_URL"):
        names = ", ".join(overrides or ["EC2BACKUP_LAB_URL"])
        return f"smoke-aws: refusing to run: {names} is set (the lab?); it runs against real AWS"
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        return f"smoke-aws: missing {', '.join(missing)} (see tests/smoke_aws.py)"
    if not re.fullmatch(r"i-[0-9a-f]{8,17}", env["EC2BACKUP_SMOKE_INSTANCE_ID"]):
        return "smoke-aws: EC2BACKUP_SMOKE_INSTANCE_ID must be an instance id (i-...)"
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d+", env["EC2BACKUP_SMOKE_REGION"]):
        return "smoke-aws: EC2BACKUP_SMOKE_REGION must be a Region name (e.g. eu-west-1)"
    return None


def _say(message: str) -> None:
    print(f"smoke-aws: {message}", flush=True)


def run_cli(name: str, args: list[str], timeout_s: float, check: bool = True) -> tuple[int, str]:
    """Run `ec2backup ARGS` (progress on the terminal, stdout captured); its exit code and
    stdout. A non-zero exit fails the step when `check`."""
    command = [sys.executable, "-m", "ec2backup.cli", *args]
    _say(f"step {name}: ec2backup {' '.join(args)}")
    started = time.monotonic()
    try:
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s, cwd=ROOT
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"step {name}: no result after {timeout_s / 60:.0f} min") from None
    seconds = time.monotonic() - started
    if done.stdout:
        print(done.stdout, end="" if done.stdout.endswith("\n") else "\n", flush=True)
    if check and done.returncode != 0:
        raise StepFailed(f"step {name}: exit {done.returncode} after {seconds:.0f}s")
    _say(f"step {name}: exit {done.returncode} in {seconds:.0f}s")
    return done.returncode, done.stdout


def result_json(stdout: str, step: str) -> dict[str, Any]:
    """The JSON result a `--wait` command prints after its id line."""
    start = stdout.find("{")
    if start < 0:
        raise StepFailed(f"step {step}: no JSON result on stdout")
    try:
        data = json.loads(stdout[start:])
    except json.JSONDecodeError as exc:
        raise StepFailed(f"step {step}: unreadable result: {exc}") from None
    if not isinstance(data, dict):
        raise StepFailed(f"step {step}: the result is not an object")
    return data


def smallest_volume(ec2: Any, instance_id: str) -> tuple[str, int]:
    """The id and size (GiB) of the instance's smallest attached EBS volume."""
    reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    mappings = [
        m
        for r in reservations
        for i in r["Instances"]
        for m in i.get("BlockDeviceMappings", [])
        if "Ebs" in m
    ]
    ids = [m["Ebs"]["VolumeId"] for m in mappings]
    if not ids:
        raise StepFailed(f"instance {instance_id} has no EBS volume")
    volumes = ec2.describe_volumes(VolumeIds=ids)["Volumes"]
    smallest = min(volumes, key=lambda v: (v["Size"], v["VolumeId"]))
    return str(smallest["VolumeId"]), int(smallest["Size"])


def main() -> int:
    env = dict(os.environ)
    why = refusal(env)
    if why:
        print(why, file=sys.stderr)
        return 2

    from ec2backup import aws

    instance_id = env["EC2BACKUP_SMOKE_INSTANCE_ID"]
    region = env["EC2BACKUP_SMOKE_REGION"]
    repo = env.get("EC2BACKUP_SMOKE_REPO") or None
    role_arn = env.get("EC2BACKUP_SMOKE_ACCOUNT_ROLE_ARN") or None
    keep = env.get("EC2BACKUP_SMOKE_KEEP") == "1"
    timeout_s = 60.0 * float(env.get("EC2BACKUP_SMOKE_TIMEOUT_MINUTES") or DEFAULT_TIMEOUT_MINUTES)
    account = ["--account-role-arn", role_arn] if role_arn else []
    started = time.monotonic()

    try:
        ec2 = aws.client("ec2", region, role_arn)
        volume_id, size_gib = smallest_volume(ec2, instance_id)
        _say(f"instance {instance_id} in {region}; restoring volume {volume_id} ({size_gib} GiB)")

        rc, _ = run_cli("doctor", ["doctor"], timeout_s, check=False)
        if rc:
            _say("doctor reported problems (above); going on")

        with_repo = ["--repo", repo] if repo else []
        backup_args = ["backup", instance_id, "--region", region, *account, *with_repo, "--wait"]
        _, out = run_cli("backup", backup_args, timeout_s)
        backup = result_json(out, "backup")
        if backup.get("status") != "completed":
            raise StepFailed(f"step backup: status {backup.get('status')!r}")
        if repo:
            source, point = "backup", backup.get("restore_point_id")
        else:
            source, point = "snapshot", backup.get("snapshot_set_id")
        if not point:
            raise StepFailed(f"step backup: the result names no {source} restore point")
        _say(f"step backup: {source} restore point {point}")

        restore_args = [
            "restore",
            "volume",
            str(point),
            "--source",
            source,
            "--volume-id",
            volume_id,
            "--region",
            region,
            *account,
            *with_repo,
            "--wait",
        ]
        _, out = run_cli("restore", restore_args, timeout_s)
        restored = result_json(out, "restore")
        if restored.get("status") != "completed":
            raise StepFailed(f"step restore: status {restored.get('status')!r}")
        new_ids = [str(v["volume_id"]) for v in restored.get("volumes") or []]
        if len(new_ids) != 1:
            raise StepFailed(f"step restore: expected one volume, got {new_ids}")
        new_id = new_ids[0]

        _say(f"step check: volume {new_id}")
        found = ec2.describe_volumes(VolumeIds=[new_id])["Volumes"]
        if not found or int(found[0]["Size"]) < size_gib:
            raise StepFailed(f"step check: volume {new_id} missing or smaller than {size_gib} GiB")
        _say(f"step check: {new_id} is {found[0]['State']}, {found[0]['Size']} GiB")

        if keep:
            _say(f"keeping the restored volume {new_id} (EC2BACKUP_SMOKE_KEEP=1)")
        else:
            _say(f"step cleanup: deleting the restored volume {new_id}")
            ec2.get_waiter("volume_available").wait(VolumeIds=[new_id])
            ec2.delete_volume(VolumeId=new_id)
    except StepFailed as exc:
        _say(f"FAILED: {exc}")
        return 1
    except Exception as exc:  # an AWS call of the script itself
        _say(f"FAILED: {type(exc).__name__}: {' '.join(str(exc).split())}")
        return 1
    _say(
        f"passed in {time.monotonic() - started:.0f}s; kept: {source} restore point {point}"
        " (ordinary backups: retention ages them out)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

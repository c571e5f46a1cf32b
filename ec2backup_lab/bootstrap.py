"""A worker's user-data, run for real (`installs_from_wheelhouse`): the boot of a stock image.

On EC2, cloud-init runs the user-data as root on Amazon Linux 2023. The lab runs the same
script with bash in a sandbox: `EC2BACKUP_ROOT` is the instance's own root directory
(`<lab>/instances/<id>/root`, every path of the script lives under it), and the system tools
the script calls are stand-ins on `PATH` (`<lab>/instances/<id>/bin`):

- `dnf` succeeds without doing anything (`python3.11` is there: the lab's interpreter);
- `python3.11` is the lab's Python (a real `-m venv`);
- `aws s3 cp --recursive SRC DST` copies from the lab's S3 with the instance role's keys;
- `systemctl` and `shutdown` record their arguments (`systemctl.log`, `shutdown.log`).

`pip install --no-index` from the copied wheelhouse is real. Once the script succeeded and
enabled the unit, the lab starts the unit's `ExecStart` command, as systemd would; the
script's output is `cloud-init-output.log`. Not modelled: `Restart=always` (a dead agent stays
dead, as the fast path's does) and the power-off at the maximum lifetime (only recorded).
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ec2backup.userdata import AGENT_UNIT

log = logging.getLogger("ec2backup_lab.bootstrap")
# pip installs some 40 wheels into a fresh venv: a minute or two on a small machine.
BOOT_TIMEOUT_SECONDS = 600


def installs_from_wheelhouse(user_data: str) -> bool:
    return "--no-index --find-links" in user_data


def _shims(bin_dir: Path, inst_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    scripts = {
        "dnf": "exit 0\n",
        "python3.11": f'exec {shlex.quote(sys.executable)} "$@"\n',
        "aws": f'exec {shlex.quote(sys.executable)} -m ec2backup_lab.bootstrap aws "$@"\n',
        "systemctl": f'echo "$*" >> {shlex.quote(str(inst_dir / "systemctl.log"))}\n',
        "shutdown": f'echo "$*" >> {shlex.quote(str(inst_dir / "shutdown.log"))}\n',
    }
    for name, body in scripts.items():
        path = bin_dir / name
        path.write_text("#!/bin/sh\n" + body)
        path.chmod(0o755)


def unit_command(root: Path) -> list[str] | None:
    """The agent unit's `ExecStart` argv, if the script wrote the unit."""
    unit = root / "etc" / "systemd" / "system" / AGENT_UNIT
    if not unit.exists():
        return None
    for line in unit.read_text().splitlines():
        if line.startswith("ExecStart="):
            return shlex.split(line.removeprefix("ExecStart="))
    return None


def boot(
    instance_id: str,
    user_data: str,
    inst_dir: Path,
    env: dict[str, str],
    start: Callable[[str, Path, list[str], dict[str, str]], None],
) -> None:
    root, bin_dir = inst_dir / "root", inst_dir / "bin"
    root.mkdir(parents=True, exist_ok=True)
    _shims(bin_dir, inst_dir)
    script = inst_dir / "user-data.sh"
    script.write_text(user_data)
    run_env = {
        **env,
        "EC2BACKUP_ROOT": str(root),
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    with open(inst_dir / "cloud-init-output.log", "ab") as out:
        try:
            done = subprocess.run(
                ["bash", str(script)],
                env=run_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=root,
                timeout=BOOT_TIMEOUT_SECONDS,
            )
        except subprocess.TimeoutExpired:
            log.warning("instance %s: user-data timed out", instance_id)
            return
    if done.returncode != 0:
        log.warning("instance %s: user-data failed (%s)", instance_id, done.returncode)
        return
    enabled = (
        (inst_dir / "systemctl.log").read_text() if (inst_dir / "systemctl.log").exists() else ""
    )
    command = unit_command(root)
    if command is None or f"enable --now {AGENT_UNIT}" not in enabled:
        log.warning("instance %s: user-data did not enable %s", instance_id, AGENT_UNIT)
        return
    start(instance_id, inst_dir, command, env)


def _aws(args: list[str]) -> int:
    """`aws s3 cp --recursive [--only-show-errors] s3://BUCKET/PREFIX DIR`, nothing else."""
    import boto3

    words = [a for a in args if a not in ("--only-show-errors", "--quiet")]
    if words[:3] != ["s3", "cp", "--recursive"] or len(words) != 5:
        print(f"lab aws stand-in: unsupported: aws {' '.join(args)}", file=sys.stderr)
        return 2
    source, dest = words[3], Path(words[4])
    bucket, _, prefix = source.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = dest / obj["Key"][len(prefix) :].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["aws"]:
        sys.exit(_aws(sys.argv[2:]))
    sys.exit(2)

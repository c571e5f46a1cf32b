"""The real boot of a worker (issue 15): `ec2backup worker-image publish` uploads the agent's
wheelhouse; the session's worker, launched on the stock image, runs its user-data for real in
the lab's sandbox (pip from the wheelhouse, the systemd unit, the lifetime power-off) and the
agent it installed does the backup. The only test of the slow path: the others take the
lab's fast path (the agent command started directly)."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from session_helpers import BUCKET, REPO_ROOT, ROLE_TAG, Workbench

PREFIX = f"wheelhouse-{uuid.uuid4().hex[:6]}"
WHEELHOUSE = f"s3://{BUCKET}/{PREFIX}/{version('ec2backup')}/x86_64/"
# The agents' Temporal credentials: a secret in the backup account's home Region, named in the
# configuration, read by the agent with its instance role (the lab's dev server takes any key).
CREDENTIALS_SECRET = f"ec2backup-tests/agent-credentials-{uuid.uuid4().hex[:6]}"
ORCHESTRATOR_ENV: dict[str, str | None] = {
    "EC2BACKUP_WORKER__WHEELHOUSE_URL": WHEELHOUSE,
    "EC2BACKUP_TEMPORAL__AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
    # a boot that installs some 40 wheels takes longer than the fast path's
    "EC2BACKUP_AGENT_BOOT_TIMEOUT_SECONDS": "300",
}


@pytest.fixture(scope="module", autouse=True)
def published(lab: Any) -> str:
    """Before the module's orchestrator starts (autouse fixtures come first)."""
    lab.client("secretsmanager").create_secret(
        Name=CREDENTIALS_SECRET, SecretString=json.dumps({"api_key": "lab-key", "tls": False})
    )
    s3 = lab.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.ClientError as exc:
        if "BucketAlready" not in exc.response["Error"]["Code"]:
            raise
    done = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "worker-image", "publish", "--to",
         f"s3://{BUCKET}/{PREFIX}"],
        env=lab.env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == WHEELHOUSE
    keys = s3.list_objects_v2(Bucket=BUCKET, Prefix=WHEELHOUSE.split("/", 3)[3])["Contents"]
    names = {k["Key"].rsplit("/", 1)[-1] for k in keys}
    assert "SHA256SUMS" in names and any(n.startswith("ec2backup-") for n in names)
    assert any(n.startswith("temporalio-") for n in names)  # the dependencies too
    return WHEELHOUSE


def test_worker_boots_from_the_published_wheelhouse(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    found = wb.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:ec2backup:session", "Values": [session.session_id]},
            {"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
        ]
    )
    (worker,) = [i for r in found["Reservations"] for i in r["Instances"]]
    inst_dir = Path(wb.lab.dir) / "instances" / worker["InstanceId"]
    root = inst_dir / "root"
    # the script ran: the wheelhouse copied, a venv with the agent, the unit written and
    # enabled, the power-off at the maximum lifetime scheduled
    assert (root / "var/lib/ec2backup/wheelhouse/SHA256SUMS").exists()
    assert (root / "opt/ec2backup/bin/ec2backup").exists()
    unit = (root / "etc/systemd/system/ec2backup-agent.service").read_text()
    assert "Restart=always" in unit and f"ExecStart={root}/opt/ec2backup/bin/ec2backup" in unit
    assert "enable --now ec2backup-agent.service" in (inst_dir / "systemctl.log").read_text()
    assert (inst_dir / "shutdown.log").read_text().startswith("-h +720")
    # and the agent that did the backup is the one it installed
    command = (inst_dir / "agent.cmd").read_text()
    assert command.startswith(f"{root}/opt/ec2backup/bin/ec2backup agent")
    # with its Temporal credentials named, not given: the secret's name, never its value
    assert f"--credentials-secret {CREDENTIALS_SECRET}" in command
    assert "lab-key" not in command and "lab-key" not in unit
    # and, as on EC2, it had no keys, instance id or Region of its own: only its metadata
    given = set((inst_dir / "agent.env").read_text().split())
    assert "AWS_EC2_METADATA_SERVICE_ENDPOINT" in given
    assert not given & {"AWS_ACCESS_KEY_ID", "AWS_DEFAULT_REGION", "EC2BACKUP_INSTANCE_ID"}
    assert session.result is not None and session.result["restore_point_id"]

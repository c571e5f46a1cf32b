"""Each repository's key as the installation configuration says (issue 15): a password held in
Secrets Manager (`[[repositories]] password_secret`), or a KMS-only repository (`kms = true`)
that sessions open with their roles. The orchestrator here has no EC2BACKUP_REPO_PASSWORD at
all: a session that worked only with the one environment password fails."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from session_helpers import BUCKET, REGION, REPO_ROOT, Workbench

SUFFIX = uuid.uuid4().hex[:8]
SECRET_REPO = f"s3://{BUCKET}/keys-secret-{SUFFIX}"
KMS_REPO = f"s3://{BUCKET}/keys-kms-{SUFFIX}"
PASSWORD_SECRET = f"ec2backup-tests/repository-password-{SUFFIX}"
SECRET_PASSWORD = "from-secrets-manager"
CONFIG = Path(tempfile.gettempdir()) / f"ec2backup-repository-keys-{SUFFIX}.toml"
# The orchestrator reads this configuration and has no environment password.
ORCHESTRATOR_ENV = {"EC2BACKUP_REPO_PASSWORD": None, "EC2BACKUP_CONFIG": str(CONFIG)}


@pytest.fixture(scope="module", autouse=True)
def _configuration() -> Any:
    """Written before the module's orchestrator starts (autouse runs first)."""
    CONFIG.write_text(
        f'home_region = "{REGION}"\n'
        f'[[repositories]]\nurl = "{SECRET_REPO}"\npassword_secret = "{PASSWORD_SECRET}"\n'
        f'[[repositories]]\nurl = "{KMS_REPO}"\nkms = true\n'
        # allowed (the allow-list), but with no key configured: the password test below
        f'[[repositories]]\nurl = "s3://{BUCKET}/keys-unconfigured-*"\n'
    )
    yield
    CONFIG.unlink(missing_ok=True)


def _init(wb: Workbench, url: str, env_password: str | None, *args: str) -> None:
    env = {k: v for k, v in wb.env.items() if k != "EC2BACKUP_REPO_PASSWORD"}
    if env_password is not None:
        env["EC2BACKUP_REPO_PASSWORD"] = env_password
    done = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "repo", "init", "--repo", url, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr


def _bucket(wb: Workbench) -> None:
    s3 = wb.client("s3")
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.ClientError as exc:
        if "BucketAlready" not in exc.response["Error"]["Code"]:
            raise


def _restores_exact(
    wb: Workbench, inst: dict[str, Any], session: Any, repo: str, tmp: Path
) -> None:
    volume_id = inst["volumes"][0]["volume_id"]
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
    snap_id = next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume_id)
    wb.assert_restores(repo, session.result["restore_point_id"], volume_id, snap_id, tmp / "v.img")


def test_password_from_the_configured_secret(wb: Workbench, tmp_path: Path) -> None:
    _bucket(wb)
    wb.client("secretsmanager").create_secret(Name=PASSWORD_SECRET, SecretString=SECRET_PASSWORD)
    _init(wb, SECRET_REPO, SECRET_PASSWORD)
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.03", "--seed", "41")
    session = wb.backup(inst["instance_id"], "--repo", SECRET_REPO)
    # `image restore` (the CLI) opens it with the environment password the secret holds
    env_wb = Workbench(
        lab=wb.lab,
        env={**wb.env, "EC2BACKUP_REPO_PASSWORD": SECRET_PASSWORD},
        name=wb.name,
        orchestrator=wb.orchestrator,
    )
    _restores_exact(env_wb, inst, session, SECRET_REPO, tmp_path)


def test_kms_only_repository(wb: Workbench, tmp_path: Path) -> None:
    _bucket(wb)
    key = wb.client("kms").create_key(Description="ec2backup repository key")["KeyMetadata"]
    _init(wb, KMS_REPO, None, "--kms-key-id", key["Arn"])
    keys = wb.client("s3").list_objects_v2(
        Bucket=BUCKET, Prefix=KMS_REPO.split("/", 3)[3] + "/keys/"
    )
    assert len(keys.get("Contents", [])) == 1  # only the KMS wrapping: no password exists
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.03", "--seed", "42")
    session = wb.backup(inst["instance_id"], "--repo", KMS_REPO)
    _restores_exact(wb, inst, session, KMS_REPO, tmp_path)


def test_an_unconfigured_repository_needs_the_environment_password(wb: Workbench) -> None:
    """Not in the configuration and no EC2BACKUP_REPO_PASSWORD: the session fails at once,
    naming the repository (not after provisioning a worker)."""
    other = f"s3://{BUCKET}/keys-unconfigured-{SUFFIX}"
    _bucket(wb)
    _init(wb, other, "pw")
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--seed", "43")
    session = wb.backup(inst["instance_id"], "--repo", other, check=False)
    text = session.stdout + session.stderr
    assert session.returncode != 0, text
    assert f"no repository password for {other}" in text, text

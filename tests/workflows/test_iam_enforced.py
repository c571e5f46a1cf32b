"""The IAM kit is enough, and doctor names what is missing (issue 15).

With the lab enforcing IAM (`enforce_iam`, what `lab up --enforce-iam` sets; here switched on
for this module through `/_lab/config`), assumed roles may do only what their policies allow.
The orchestrator runs as a role holding exactly the kit's orchestrator policy, the production
account's role holds the kit's production policy (trust with an ExternalId), and the workers
the kit's worker policy (the lab's accounts have it: ec2backup_lab/baseline.py). A backup
session, a restore from its backup and retention complete; doctor passes; with one action taken
out of the production policy doctor names it, in one line.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from session_helpers import (
    ACCOUNT_A,
    ACCOUNT_B,
    BUCKET,
    REGION,
    REPO_ROOT,
    Orchestrator,
    Workbench,
    env_for,
)

from ec2backup import iamkit

SUFFIX = uuid.uuid4().hex[:6]
EXTERNAL_ID = f"kit-{SUFFIX}"
ORCH_ROLE = f"arn:aws:iam::{ACCOUNT_A}:role/ec2backup-orchestrator"
PROD_ROLE = f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup-production"
VALUES = {
    "BackupAccountId": ACCOUNT_A,
    "ExternalId": EXTERNAL_ID,
    "RepositoryBucket": BUCKET,
}
# what the stack fills in per account (the pseudo parameter AWS::AccountId)
VALUES_A = {**VALUES, "AWS::AccountId": ACCOUNT_A}
VALUES_B = {**VALUES, "AWS::AccountId": ACCOUNT_B}
REMOVED = "ec2:CreateSnapshots"


def _enforce(wb: Workbench, on: bool) -> dict[str, Any]:
    return dict(wb.lab_call("POST", "config", {"enforce_iam": on}))


def _role(iam: Any, arn: str, trust: dict[str, Any], policy: dict[str, Any]) -> None:
    name = arn.rsplit("/", 1)[1]
    try:
        iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))
    except iam.exceptions.EntityAlreadyExistsException:
        iam.update_assume_role_policy(RoleName=name, PolicyDocument=json.dumps(trust))
    iam.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy))


@pytest.fixture(scope="module")
def kit(lab: Any) -> Iterator[dict[str, Any]]:
    """The kit's roles, an orchestrator running as the orchestrator role, enforcement on."""
    wb0 = Workbench(lab=lab, env=env_for(lab, {}), name="iam-setup", orchestrator=None)  # type: ignore[arg-type]
    _role(
        lab.client("iam"),
        ORCH_ROLE,
        iamkit.trust(iamkit.Role.orchestrator, VALUES_A),
        iamkit.policy(iamkit.Role.orchestrator, VALUES_A),
    )
    iam_b = wb0.client("iam", role_arn=f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup")
    _role(
        iam_b,
        PROD_ROLE,
        iamkit.trust(iamkit.Role.production, VALUES_B),
        iamkit.policy(iamkit.Role.production, VALUES_B),
    )
    creds = lab.client("sts").assume_role(RoleArn=ORCH_ROLE, RoleSessionName="orchestrator")[
        "Credentials"
    ]
    config = Path(tempfile.gettempdir()) / f"ec2backup-iam-{SUFFIX}.toml"
    config.write_text(
        f'home_region = "{REGION}"\n'
        f'[temporal]\naddress = "{lab.temporal_address}"\n'
        f'[[accounts]]\nid = "{ACCOUNT_B}"\nrole_arn = "{PROD_ROLE}"\n'
        f'external_id = "{EXTERNAL_ID}"\nname = "prod"\n'
        # the configuration is the workflows' allow-list: the tests' repositories too
        f'[[repositories]]\nurl = "s3://{BUCKET}/*"\n'
    )
    as_orchestrator = env_for(
        lab,
        {
            "AWS_ACCESS_KEY_ID": creds["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": creds["SecretAccessKey"],
            "AWS_SESSION_TOKEN": creds["SessionToken"],
            "EC2BACKUP_CONFIG": str(config),
        },
    )
    orchestrator = Orchestrator(as_orchestrator, Path(lab.dir) / "orchestrator-iam.log")
    # the CLI (starting workflows, seeding, checking) keeps the lab's root keys
    bench = Workbench(
        lab=lab, env=env_for(lab, {"EC2BACKUP_CONFIG": str(config)}), name="iam",
        orchestrator=orchestrator,
    )  # fmt: skip
    assert _enforce(wb0, True)["enforce_iam"] is True
    orchestrator.start()
    try:
        yield {"bench": bench, "env": as_orchestrator, "config": config}
    finally:
        try:
            bench.terminate_open_sessions()
        finally:
            orchestrator.stop()
            _enforce(wb0, False)
            config.unlink(missing_ok=True)


def _doctor(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "doctor", "--verbose"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO_ROOT,
    )


def test_enforcement_refuses_what_a_policy_does_not_allow(lab: Any, kit: dict[str, Any]) -> None:
    """The orchestrator role may describe instances but not, say, create a bucket."""
    env = kit["env"]
    import boto3

    session = boto3.Session(
        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=env["AWS_SESSION_TOKEN"],
        region_name=REGION,
    )
    session.client("ec2", endpoint_url=lab.aws_url).describe_instances()
    with pytest.raises(Exception) as err:
        session.client("s3", endpoint_url=lab.aws_url).create_bucket(Bucket=f"no-{SUFFIX}")
    assert "AccessDenied" in str(err.value)


def test_session_restore_and_retention_with_only_the_kits_policies(
    kit: dict[str, Any], tmp_path: Path
) -> None:
    wb: Workbench = kit["bench"]
    inst = wb.seed(
        "--account", ACCOUNT_B, "--volumes", "1", "--size-gib", "1", "--fill", "0.02",
        "--tag", f"kit={SUFFIX}",
    )  # fmt: skip
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--account-role-arn", PROD_ROLE, "--repo", repo)
    assert session.result is not None
    out = wb.cli(
        "restore", "volume", session.result["restore_point_id"], "--source", "backup",
        "--device", "/dev/sdf", "--repo", repo, "--to-account", PROD_ROLE, "--wait",
        check=False, timeout=400,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads("\n".join(out.stdout.splitlines()[1:]))["status"] == "completed"
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        f"name: kit-{SUFFIX}\nselection:\n  tags: {{kit: {SUFFIX}}}\n  regions: [{REGION}]\n"
        f"  accounts: [{PROD_ROLE}]\n"
        "schedule:\n  daily: ['03:00']\nsnapshots:\n  retention: {count: 3}\n"
        f"image_backup:\n  repository: {repo}\n  retention: {{daily: 3}}\n"
    )
    report = json.loads(wb.cli("policy", "retention", str(policy), "--json").stdout)
    assert report["deleted_snapshot_sets"] == []


def test_doctor_passes_and_names_a_removed_action(lab: Any, kit: dict[str, Any]) -> None:
    env = kit["env"]
    done = _doctor(env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "orchestrator permissions: ok" in done.stdout
    assert "accounts.0 (prod) permissions: ok" in done.stdout
    assert "worker permissions: ok" in done.stdout
    wb: Workbench = kit["bench"]
    iam_b = wb.client("iam", role_arn=f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup")
    policy = iamkit.policy(iamkit.Role.production, VALUES_B)
    for st in policy["Statement"]:
        actions = [st["Action"]] if isinstance(st["Action"], str) else st["Action"]
        st["Action"] = [a for a in actions if a != REMOVED] or ["ec2:DescribeTags"]
    name = PROD_ROLE.rsplit("/", 1)[1]
    # edited as an administrator of account B would (the lab's stand-in role for B holds no
    # IAM policy: not while enforcement is on)
    _enforce(wb, False)
    iam_b.put_role_policy(RoleName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    _enforce(wb, True)
    try:
        done = _doctor(env)
        assert done.returncode == 1, done.stdout + done.stderr
        problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
        assert problems == [
            f"PROBLEM  accounts.0 (prod) permissions: {REMOVED} is not allowed to {PROD_ROLE} "
            "(IAM policy simulation)"
        ], done.stdout
    finally:
        _enforce(wb, False)
        iam_b.put_role_policy(
            RoleName=name,
            PolicyName=name,
            PolicyDocument=json.dumps(iamkit.policy(iamkit.Role.production, VALUES_B)),
        )
        _enforce(wb, True)


def test_workers_write_but_cannot_delete_repository_data(kit: dict[str, Any]) -> None:
    """The worker's policy lets it write packs, maps and restore points, and delete only its
    own locks and checkpoints (issue 17: a compromised worker cannot destroy backups)."""
    bench: Workbench = kit["bench"]
    worker = bench.client("s3", role_arn=f"arn:aws:iam::{ACCOUNT_A}:role/ec2backup-worker")
    root = bench.client("s3")
    prefix = f"worker-rights-{SUFFIX}"
    for kind in ("data/ab/abcd", "index/ef01", "maps/12/1234", "restorepoints/5678"):
        worker.put_object(Bucket=BUCKET, Key=f"{prefix}/{kind}", Body=b"x")
        with pytest.raises(ClientError) as refused:
            worker.delete_object(Bucket=BUCKET, Key=f"{prefix}/{kind}")
        assert refused.value.response["Error"]["Code"] == "AccessDenied", kind
        root.head_object(Bucket=BUCKET, Key=f"{prefix}/{kind}")  # still there
    for own in ("locks/0123", "checkpoints/4567"):
        worker.put_object(Bucket=BUCKET, Key=f"{prefix}/{own}", Body=b"x")
        worker.delete_object(Bucket=BUCKET, Key=f"{prefix}/{own}")

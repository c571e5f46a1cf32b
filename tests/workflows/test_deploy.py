"""Deployable (issue 15): `ec2backup setup` and `doctor`, a Temporal namespace chosen by a
`temporal.toml` profile alone, the Region from the AWS profile, and how workers are launched
(image from the SSM parameter, IMDSv2, instance profile, shutdown = terminate).

Everything runs against the shared lab through the real CLI (`ec2backup ...` subprocesses).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from session_helpers import (
    ACCOUNT_B,
    OTHER_REGION,
    REGION,
    REPO_ROOT,
    ROLE_B,
    ROLE_TAG,
    Orchestrator,
    Workbench,
    env_for,
    wait_for,
)

from ec2backup import iamkit
from ec2backup.config import AL2023_PARAMETER

OTHER_NAMESPACE = "ec2backup-other"
PROFILE = "other"
# The module's orchestrator launches workers with a configured security group (the
# configuration's `[worker] security_group_ids`, here through its environment override).
ORCHESTRATOR_ENV: dict[str, str | None] = {}


@pytest.fixture(scope="module", autouse=True)
def worker_security_group(lab: Any) -> str:
    """Made before the module's orchestrator starts (autouse fixtures come first)."""
    ec2 = lab.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "isDefault", "Values": ["true"]}])["Vpcs"][0]
    group = ec2.create_security_group(
        GroupName=f"ec2backup-worker-{uuid.uuid4().hex[:6]}",
        Description="ec2backup workers: egress only",
        VpcId=vpc["VpcId"],
    )["GroupId"]
    ORCHESTRATOR_ENV["EC2BACKUP_WORKER__SECURITY_GROUP_IDS"] = json.dumps([group])
    return str(group)


def _cli(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def _temporal_binary() -> str:
    from ec2backup_lab.manager import temporal_binary

    return temporal_binary()


@pytest.fixture(scope="module")
def profile_env(lab: Any) -> dict[str, str]:
    """The session environment with the namespace chosen only by a temporal.toml profile:
    no TEMPORAL_ADDRESS/NAMESPACE variables (the address comes from the lab's configuration
    file, the namespace from the profile)."""
    created = subprocess.run(
        [_temporal_binary(), "operator", "namespace", "create", "--namespace", OTHER_NAMESPACE,
         "--address", lab.temporal_address],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert created.returncode == 0 or "already" in created.stderr, created.stderr
    toml = Path(lab.dir) / "temporal-profiles.toml"
    toml.write_text(f'[profile.{PROFILE}]\nnamespace = "{OTHER_NAMESPACE}"\n')
    return env_for(
        lab,
        {
            "TEMPORAL_ADDRESS": None,
            "TEMPORAL_NAMESPACE": None,
            "TEMPORAL_CONFIG_FILE": str(toml),
            "TEMPORAL_PROFILE": PROFILE,
        },
    )


def _namespace_ready(env: dict[str, str]) -> bool:
    # A namespace is usable a moment after `namespace create` (the dev server's cache).
    done = _cli(env, "setup")
    if done.returncode != 0:
        print(f"setup in {OTHER_NAMESPACE}: rc={done.returncode} {done.stderr.strip()}")
    return done.returncode == 0


def _drop_janitor_schedule(lab: Any) -> None:
    """The Janitor schedule of the eu-west-2 installation leaves the profile's namespace: its
    payloads are encrypted with that installation's payload key, which the next tests' (home
    us-east-1) installation does not hold (one namespace serves one installation)."""
    subprocess.run(
        [_temporal_binary(), "schedule", "delete", "--schedule-id", "ec2backup-janitor",
         "--namespace", OTHER_NAMESPACE, "--address", lab.temporal_address],
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


def test_setup_twice_changes_nothing_the_second_time(
    lab: Any, profile_env: dict[str, str], request: pytest.FixtureRequest
) -> None:
    """In a fresh namespace and a fresh home Region: the first run creates the search
    attributes, the installation key (and its replica), the Janitor schedule; the second
    changes nothing."""
    request.addfinalizer(lambda: _drop_janitor_schedule(lab))
    home, replica = "eu-west-2", "eu-central-1"
    env = {
        **profile_env,
        "EC2BACKUP_HOME_REGION": home,
        "EC2BACKUP_REGIONS": json.dumps([home, replica]),
    }
    # before: doctor names what setup will do, one line each
    before = wait_for(  # the namespace is usable a moment after it is created
        lambda: (
            (r := _cli(env, "doctor")).returncode == 1
            and "search attribute PolicyName is not registered" in r.stdout
            and r
        ),
        60,
        "doctor in the new namespace",
    )
    problems = [line for line in before.stdout.splitlines() if line.startswith("PROBLEM")]
    text = "\n".join(problems)
    for name in ("PolicyName", "InstanceId", "SessionKind"):
        assert f"search attribute {name} is not registered" in text, text
    assert "janitor schedule: missing" in text, text
    missing_key = f"installation key ec2backup/installation not found in the home Region {home}"
    assert f"installation key: {missing_key}" in text, text
    first = wait_for(
        lambda: (r := _cli(env, "--output", "json", "setup")).returncode == 0 and r, 60, "setup"
    )
    steps = {s["step"]: s["action"] for s in json.loads(first.stdout)}
    assert steps == {
        "search attributes": "created",
        "installation key": "created",
        "installation key replicas": "updated",
        "janitor schedule": "created",
    }, first.stdout
    second = _cli(env, "setup")
    assert second.returncode == 0, second.stderr
    lines = second.stdout.splitlines()
    assert len(lines) == 4 and all(": unchanged" in line for line in lines), second.stdout
    sm = lab.client("secretsmanager", home)
    described = sm.describe_secret(SecretId="ec2backup/installation")
    assert {r["Region"] for r in described["ReplicationStatus"]} == {replica}
    # never created silently elsewhere: a command pointed at a Region without the key fails
    # in one line naming it
    elsewhere = {**env, "EC2BACKUP_HOME_REGION": "ap-south-1"}
    listed = _cli(elsewhere, "snapshots", "list", "--region", REGION)
    assert listed.returncode != 0
    assert "not found in the home Region ap-south-1" in listed.stderr, listed.stderr
    assert len(listed.stderr.strip().splitlines()) == 1, listed.stderr
    with pytest.raises(sm.exceptions.ResourceNotFoundException):
        lab.client("secretsmanager", "ap-south-1").describe_secret(
            SecretId="ec2backup/installation"
        )


@pytest.fixture(scope="module")
def other_bench(lab: Any, profile_env: dict[str, str]) -> Iterator[Workbench]:
    """An orchestrator and a workbench in the profile's namespace."""
    wait_for(lambda: _namespace_ready(profile_env), 60, f"namespace {OTHER_NAMESPACE}")
    orchestrator = Orchestrator(profile_env, Path(lab.dir) / "orchestrator-deploy-other.log")
    bench = Workbench(lab=lab, env=profile_env, name="deploy-other", orchestrator=orchestrator)
    orchestrator.start()
    try:
        yield bench
    finally:
        try:
            bench.terminate_open_sessions()
        finally:
            orchestrator.stop()


def test_commands_work_in_a_namespace_chosen_by_a_profile(lab: Any, other_bench: Workbench) -> None:
    """backup --wait, session list, status and restore-points list, all in the profile's
    namespace: the session is there, and not in `default`."""
    inst = other_bench.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    session = other_bench.backup(inst["instance_id"])
    listed = other_bench.cli("--output", "json", "session", "list").stdout
    assert session.session_id in listed
    shown = other_bench.cli("session", "show", session.session_id)
    assert shown.returncode == 0
    points = other_bench.cli("--output", "json", "restore-points", "list", "--instance",
                             inst["instance_id"]).stdout  # fmt: skip
    assert inst["instance_id"] in points

    async def where() -> tuple[bool, bool]:
        from ec2backup.temporal import connect

        found = []
        for namespace in (OTHER_NAMESPACE, "default"):
            client = await connect(lab.temporal_address, namespace)
            try:
                await client.get_workflow_handle(session.session_id).describe()
                found.append(True)
            except Exception:
                found.append(False)
        return found[0], found[1]

    in_other, in_default = asyncio.run(where())
    assert in_other and not in_default


def test_worker_is_launched_as_configured(
    lab: Any, wb: Workbench, worker_security_group: str
) -> None:
    """The worker of an image-level session: the image its SSM parameter names (Amazon Linux
    2023 of the instance type's architecture), IMDSv2 required, the configured security
    groups and instance profile, shutdown behaviour terminate, and user-data that starts the
    agent under systemd with a maximum lifetime."""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    session_id = wb.start_backup(inst["instance_id"], "--repo", repo)
    ec2 = wb.client("ec2")

    def running_worker() -> dict[str, Any] | None:
        # while it runs: EC2 drops the instance profile association at termination
        found = ec2.describe_instances(
            Filters=[
                {"Name": "tag:ec2backup:session", "Values": [session_id]},
                {"Name": f"tag:{ROLE_TAG}", "Values": ["worker"]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        workers = [i for r in found["Reservations"] for i in r["Instances"]]
        return workers[0] if workers else None

    worker = wait_for(running_worker, 120, "the session's worker to run", interval=0.1)
    arch = "x86_64"
    expected = wb.client("ssm").get_parameter(Name=AL2023_PARAMETER.format(arch=arch))
    assert worker["ImageId"] == expected["Parameter"]["Value"]
    assert worker["MetadataOptions"]["HttpTokens"] == "required"
    assert [g["GroupId"] for g in worker["SecurityGroups"]] == [worker_security_group]
    assert worker["IamInstanceProfile"]["Arn"].endswith(":instance-profile/ec2backup-worker")
    behaviour = ec2.describe_instance_attribute(
        InstanceId=worker["InstanceId"], Attribute="instanceInitiatedShutdownBehavior"
    )
    assert behaviour["InstanceInitiatedShutdownBehavior"]["Value"] == "terminate"
    import base64

    user_data = ec2.describe_instance_attribute(
        InstanceId=worker["InstanceId"], Attribute="userData"
    )["UserData"]["Value"]
    script = base64.b64decode(user_data).decode()
    assert "shutdown -h +720" in script
    assert "systemctl enable --now ec2backup-agent.service" in script
    assert "Restart=always" in script
    assert "EC2BACKUP_REPO_PASSWORD" not in script and "pw" not in script.split()
    assert wb.wait_status(session_id, 300) == "COMPLETED"


def _assume(lab: Any, service: str, region: str = REGION) -> Any:
    creds = lab.client("sts", region).assume_role(RoleArn=ROLE_B, RoleSessionName="doctor-test")[
        "Credentials"
    ]
    return lab.client(
        service,
        region,
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )


def test_doctor_on_the_fresh_lab_exits_0(lab: Any) -> None:
    env = {**lab.env}
    done = _cli(env, "doctor", "--verbose")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PROBLEM" not in done.stdout
    assert "temporal: ok" in done.stdout and "workers.us-east-1: ok" in done.stdout


def test_doctor_names_each_problem_in_one_line(lab: Any, tmp_path: Path) -> None:
    """A deleted instance profile, a wrong ExternalId and an unreadable repository: one line
    each, naming it; exit 1. With the right ExternalId the account line goes away."""
    suffix = uuid.uuid4().hex[:6]
    iam = lab.client("iam")
    profile = f"ec2backup-doctor-{suffix}"
    iam.create_instance_profile(InstanceProfileName=profile)
    iam.delete_instance_profile(InstanceProfileName=profile)
    role_name = f"ec2backup-doctor-{suffix}"
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
                "Action": "sts:AssumeRole",
                "Condition": {"StringEquals": {"sts:ExternalId": "the-right-one"}},
            }
        ],
    }
    iam_b = _assume(lab, "iam")
    role_arn = iam_b.create_role(RoleName=role_name, AssumeRolePolicyDocument=json.dumps(trust))[
        "Role"
    ]["Arn"]
    # the IAM kit's production policy (what doctor simulates once it can assume the role)
    kit = iamkit.policy(
        iamkit.Role.production,
        {"BackupAccountId": "123456789012", "AWS::AccountId": ACCOUNT_B},
    )
    iam_b.put_role_policy(RoleName=role_name, PolicyName="kit", PolicyDocument=json.dumps(kit))
    s3 = lab.client("s3")
    bucket = f"ec2backup-doctor-{suffix}"
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="norepo/config", Body=b"not a repository")

    def config(external_id: str) -> Path:
        path = tmp_path / f"config-{external_id}.toml"
        path.write_text(
            f'home_region = "{REGION}"\n'
            f'regions = ["{REGION}"]\n'
            f'[worker]\ninstance_profile = "{profile}"\n'
            f'[[accounts]]\nid = "{ACCOUNT_B}"\nrole_arn = "{role_arn}"\n'
            f'external_id = "{external_id}"\nname = "prod"\n'
            f'[[repositories]]\nurl = "s3://{bucket}/norepo"\n'
        )
        return path

    done = _cli(lab.env, "--config", str(config("wrong")), "doctor")
    assert done.returncode == 1, done.stdout + done.stderr
    problems = [line for line in done.stdout.splitlines() if line.startswith("PROBLEM")]
    assert len(problems) == 3, done.stdout
    text = "\n".join(problems)
    assert f"workers.{REGION}: instance_profile: {profile} does not exist" in text, text
    assert "accounts.0 (prod): AccessDenied" in text and role_arn in text, text
    assert f"repositories.0 (s3://{bucket}/norepo)" in text, text
    fixed = _cli(lab.env, "--config", str(config("the-right-one")), "doctor")
    assert fixed.returncode == 1
    assert "accounts.0" not in fixed.stdout, fixed.stdout
    assert len([ln for ln in fixed.stdout.splitlines() if ln.startswith("PROBLEM")]) == 2


def test_region_comes_from_the_aws_profile(lab: Any, wb: Workbench, tmp_path: Path) -> None:
    """AWS_PROFILE naming a profile in eu-west-1 and no other Region setting: `backup` and
    `snapshots list` work in eu-west-1."""
    inst = wb.seed("--region", OTHER_REGION, "--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    aws_config = tmp_path / "aws-config"
    aws_config.write_text(f"[profile eu]\nregion = {OTHER_REGION}\n")
    env = {k: v for k, v in wb.env.items() if k not in ("AWS_DEFAULT_REGION", "AWS_REGION")}
    env.update({"AWS_CONFIG_FILE": str(aws_config), "AWS_PROFILE": "eu"})
    started = _cli(env, "backup", inst["instance_id"], "--wait", timeout=400)
    assert started.returncode == 0, started.stdout + started.stderr
    session_id = started.stdout.splitlines()[0].strip()
    wb.sessions.append(session_id)
    result = json.loads("\n".join(started.stdout.splitlines()[1:]))
    assert result["status"] == "completed", result
    listed = _cli(env, "snapshots", "list", "--instance", inst["instance_id"], "--json")
    assert listed.returncode == 0, listed.stderr
    entries = json.loads(listed.stdout)["restore_points"]
    assert entries and all(e["region"] == OTHER_REGION for e in entries), entries
    # and the global --region flag wins over the profile
    other = _cli(env, "--region", REGION, "snapshots", "list", "--instance", inst["instance_id"],
                 "--json")  # fmt: skip
    assert other.returncode == 0 and json.loads(other.stdout)["restore_points"] == []


def test_production_worker_reads_its_key_from_the_backup_account(wb: Workbench) -> None:
    """A production-placement worker: the session secret (the repository key) never lands in
    the production account; it stays in the backup account under the installation's
    session-secret KMS key, readable by that one worker instance only, and the session
    completes (the worker read it across accounts)."""
    from ec2backup.workers import SESSION_SECRET_KEY_ALIAS, session_secret_name

    inst = wb.seed("--account", ACCOUNT_B, "--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    session_id = wb.start_backup(
        inst["instance_id"],
        "--account-role-arn",
        ROLE_B,
        "--repo",
        repo,
        "--worker-placement",
        "production",
    )
    ec2_b = wb.client("ec2", role_arn=ROLE_B)

    def running_worker() -> dict[str, Any] | None:
        found = ec2_b.describe_instances(
            Filters=[
                {"Name": "tag:ec2backup:session", "Values": [session_id]},
                {"Name": "instance-state-name", "Values": ["running"]},
            ]
        )
        workers = [i for r in found["Reservations"] for i in r["Instances"]]
        return workers[0] if workers else None

    worker = wait_for(running_worker, 120, "the production worker to run", interval=0.1)
    name = session_secret_name(session_id)
    sm_a = wb.client("secretsmanager")
    sm_b = wb.client("secretsmanager", role_arn=ROLE_B)

    def secret_with_policy() -> dict[str, Any] | None:
        policy = sm_a.get_resource_policy(SecretId=name).get("ResourcePolicy")
        return json.loads(policy) if policy else None

    policy = wait_for(secret_with_policy, 60, "the secret's resource policy", interval=0.1)
    (statement,) = policy["Statement"]
    assert statement["Principal"] == {"AWS": f"arn:aws:iam::{ACCOUNT_B}:root"}
    assert statement["Condition"]["StringEquals"]["ec2:SourceInstanceARN"] == (
        f"arn:aws:ec2:{REGION}:{ACCOUNT_B}:instance/{worker['InstanceId']}"
    )
    key = wb.client("kms").describe_key(KeyId=SESSION_SECRET_KEY_ALIAS)["KeyMetadata"]["Arn"]
    assert sm_a.describe_secret(SecretId=name)["KmsKeyId"] == key
    assert [s for s in sm_b.list_secrets()["SecretList"] if s["Name"] == name] == []
    assert wb.wait_status(session_id, 300) == "COMPLETED"
    with pytest.raises(sm_a.exceptions.ResourceNotFoundException):  # released with the worker
        sm_a.describe_secret(SecretId=name)

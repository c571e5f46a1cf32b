"""Where the lab now bites like AWS for a deployment (issue 15): the ExternalId of a role's
trust policy, Amazon Linux 2023's public images behind their SSM parameters, the IAM kit's
worker instance profile in the lab's accounts, and the configuration `lab up` writes."""

from __future__ import annotations

import json
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import ACCOUNT_A, ACCOUNT_B, REGION, account_b_creds, client, error_of

from ec2backup import config
from ec2backup_lab.baseline import LAB_ACCOUNTS, WORKER_INSTANCE_PROFILE


def _trust(external_id: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_A}:root"},
                    "Action": "sts:AssumeRole",
                    "Condition": {"StringEquals": {"sts:ExternalId": external_id}},
                }
            ],
        }
    )


def test_assume_role_checks_the_trust_policys_external_id(lab: Any) -> None:
    """AWS refuses AssumeRole (AccessDenied) when the role's trust policy asks for an
    ExternalId the caller does not give; moto assumed any role with any ExternalId."""
    name = f"ext-{uuid.uuid4().hex[:8]}"
    iam_b = client(lab, "iam", creds=account_b_creds(lab))
    arn = iam_b.create_role(RoleName=name, AssumeRolePolicyDocument=_trust("right"))["Role"]["Arn"]
    sts = client(lab, "sts")
    for given in ("wrong", None):
        kwargs = {"ExternalId": given} if given else {}
        with pytest.raises(ClientError) as err:
            sts.assume_role(RoleArn=arn, RoleSessionName="ext-test", **kwargs)
        assert error_of(err.value) == ("AccessDenied", 403)
    ok = sts.assume_role(RoleArn=arn, RoleSessionName="ext-test", ExternalId="right")
    assert ok["AssumedRoleUser"]["Arn"].startswith(f"arn:aws:sts::{ACCOUNT_B}:assumed-role/")


def test_amazon_linux_2023_images_exist_behind_their_parameters(lab: Any) -> None:
    """The worker's default image: what the public SSM parameter names is a public,
    Amazon-owned image of that architecture (moto's EC2 did not know those ids)."""
    ssm, ec2 = client(lab, "ssm"), client(lab, "ec2")
    for arch in ("x86_64", "arm64"):
        ami = ssm.get_parameter(Name=config.AL2023_PARAMETER.format(arch=arch))["Parameter"][
            "Value"
        ]
        (image,) = ec2.describe_images(ImageIds=[ami])["Images"]
        assert image["Architecture"] == arch and image["Public"]
        assert image["OwnerId"] == "137112412989" and image["BootMode"] == "uefi-preferred"
    # Amazon's snapshots behind them are not the account's
    own = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert all(s["OwnerId"] == ACCOUNT_A for s in own)
    # and a Graviton type boots the arm64 one, an x86 type refuses it
    arm = ssm.get_parameter(Name=config.AL2023_PARAMETER.format(arch="arm64"))["Parameter"]
    with pytest.raises(ClientError) as err:
        ec2.run_instances(ImageId=arm["Value"], InstanceType="c5.large", MinCount=1, MaxCount=1)
    assert error_of(err.value)[0] == "InvalidParameterValue"


def test_the_kits_worker_instance_profile_exists_in_every_lab_account(lab: Any) -> None:
    """RunInstances refuses an instance profile that does not exist in the account (moto's
    IAM starts empty); the lab's accounts have the IAM kit's worker profile deployed."""
    assert ACCOUNT_A in LAB_ACCOUNTS and ACCOUNT_B in LAB_ACCOUNTS
    for creds in (None, account_b_creds(lab)):
        profile = client(lab, "iam", creds=creds).get_instance_profile(
            InstanceProfileName=WORKER_INSTANCE_PROFILE
        )["InstanceProfile"]
        assert [r["RoleName"] for r in profile["Roles"]] == ["ec2backup-worker"]
    with pytest.raises(ClientError):
        client(lab, "ec2").run_instances(
            ImageId="ami-0ec2backup0lab001",
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            IamInstanceProfile={"Name": "no-such-profile"},
        )


def test_instances_are_launched_with_their_instance_profile(lab: Any) -> None:
    """AWS launches every instance of a RunInstances with the profile: DescribeInstances shows
    it from the start, and a ClientToken retry returns the same instances. moto associated the
    profile after its launch (a window without it), for the first instance only, and a retry
    failed on the association it had made."""
    ec2 = client(lab, "ec2")
    token = f"lab-profile-{uuid.uuid4().hex}"

    def launch() -> list[str]:
        out = ec2.run_instances(
            ImageId="ami-0ec2backup0lab001",
            InstanceType="t3.micro",
            MinCount=2,
            MaxCount=2,
            ClientToken=token,
            IamInstanceProfile={"Name": WORKER_INSTANCE_PROFILE},
        )
        return sorted(i["InstanceId"] for i in out["Instances"])

    ids = launch()
    try:
        found = ec2.describe_instances(InstanceIds=ids)["Reservations"]
        profiles = [
            i.get("IamInstanceProfile", {}).get("Arn", "") for r in found for i in r["Instances"]
        ]
        assert len(profiles) == 2
        assert all(p.endswith(f":instance-profile/{WORKER_INSTANCE_PROFILE}") for p in profiles)
        assert launch() == ids  # the retry: the same instances, nothing refused
    finally:
        ec2.terminate_instances(InstanceIds=ids)


def test_lab_up_writes_its_configuration_and_runs_setup(lab: Any) -> None:
    path = Path(lab.dir) / "ec2backup.toml"
    parsed = config.parse(tomllib.loads(path.read_text()), str(path))
    assert parsed.home_region == REGION
    assert parsed.temporal.address == lab.temporal_address
    assert parsed.worker_for(REGION).instance_profile == WORKER_INSTANCE_PROFILE
    # setup ran: the installation key exists in the home Region
    secret = client(lab, "secretsmanager").describe_secret(SecretId="ec2backup/installation")
    assert secret["Name"] == "ec2backup/installation"


def test_secrets_are_read_across_accounts_as_aws_allows(lab: Any) -> None:
    """Another account reads a secret by ARN only when its resource policy allows that account
    and it is encrypted with a customer-managed key whose policy lets the account decrypt
    (moto looked the ARN up in the caller's own account: ResourceNotFoundException)."""
    sm_a, kms_a = client(lab, "secretsmanager"), client(lab, "kms")
    sm_b = client(lab, "secretsmanager", creds=account_b_creds(lab))
    allow_b = json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_B}:root"},
                    "Action": "secretsmanager:GetSecretValue",
                    "Resource": "*",
                }
            ],
        }
    )

    def denied(arn: str) -> None:
        with pytest.raises(ClientError) as err:
            sm_b.get_secret_value(SecretId=arn)
        assert error_of(err.value)[0] == "AccessDeniedException"

    # the default aws/secretsmanager key: never readable from another account
    plain = sm_a.create_secret(Name=f"x-{uuid.uuid4().hex[:6]}", SecretString="s1")["ARN"]
    denied(plain)
    sm_a.put_resource_policy(SecretId=plain, ResourcePolicy=allow_b)
    denied(plain)
    # a customer-managed key: readable once both policies allow account B
    key = kms_a.create_key(Description="cross-account secrets")["KeyMetadata"]["Arn"]
    keyed = sm_a.create_secret(Name=f"y-{uuid.uuid4().hex[:6]}", SecretString="s2", KmsKeyId=key)[
        "ARN"
    ]
    denied(keyed)  # no resource policy
    sm_a.put_resource_policy(SecretId=keyed, ResourcePolicy=allow_b)
    denied(keyed)  # the key's policy does not let B decrypt yet
    policy = json.loads(kms_a.get_key_policy(KeyId=key, PolicyName="default")["Policy"])
    policy["Statement"].append(
        {
            "Effect": "Allow",
            "Principal": {"AWS": f"arn:aws:iam::{ACCOUNT_B}:root"},
            "Action": "kms:Decrypt",
            "Resource": "*",
        }
    )
    kms_a.put_key_policy(KeyId=key, PolicyName="default", Policy=json.dumps(policy))
    assert sm_b.get_secret_value(SecretId=keyed)["SecretString"] == "s2"
    # a condition on the worker instance: keys that are not that instance's are refused
    only_instance = json.loads(allow_b)
    only_instance["Statement"][0]["Condition"] = {
        "StringEquals": {
            "ec2:SourceInstanceARN": f"arn:aws:ec2:{REGION}:{ACCOUNT_B}:instance/i-0123456789"
        }
    }
    sm_a.put_resource_policy(SecretId=keyed, ResourcePolicy=json.dumps(only_instance))
    denied(keyed)


def test_simulate_principal_policy_evaluates_a_roles_actions(lab: Any) -> None:
    """moto has no SimulatePrincipalPolicy; the lab's evaluates the role's identity policies
    by action (an explicit Deny wins; Resource and Condition are not evaluated)."""
    iam = client(lab, "iam")
    name = f"sim-{uuid.uuid4().hex[:6]}"
    arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=_trust("x"))["Role"]["Arn"]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {"Effect": "Allow", "Action": ["ec2:Describe*", "s3:GetObject"], "Resource": "*"},
            {"Effect": "Deny", "Action": "ec2:DescribeImages", "Resource": "*"},
        ],
    }
    iam.put_role_policy(RoleName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
    results = iam.simulate_principal_policy(
        PolicySourceArn=arn,
        ActionNames=["ec2:DescribeVolumes", "ec2:DescribeImages", "s3:GetObject", "s3:PutObject"],
    )["EvaluationResults"]
    assert {r["EvalActionName"]: r["EvalDecision"] for r in results} == {
        "ec2:DescribeVolumes": "allowed",
        "ec2:DescribeImages": "implicitDeny",
        "s3:GetObject": "allowed",
        "s3:PutObject": "implicitDeny",
    }


def test_enforce_iam_option_reaches_the_lab(tmp_path: Path) -> None:
    """`lab up --enforce-iam` starts the endpoint with `--enforce-iam`: its config says so."""
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ec2backup_lab.server", "--dir", str(tmp_path), "--port",
         str(port), "--enforce-iam"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_lab/config") as r:
                    assert json.load(r)["enforce_iam"] is True
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_instance_metadata_is_imdsv2_only(lab: Any) -> None:
    """Each instance's metadata at /_lab/imds/<id>/ (what AWS_EC2_METADATA_SERVICE_ENDPOINT
    points an agent booted for real at): a token first (PUT), then the instance id, zone and
    role keys; without a token, 401 (HttpTokens=required). moto served no metadata."""
    import urllib.error
    import urllib.request

    ec2 = client(lab, "ec2")
    (inst,) = ec2.run_instances(
        ImageId="ami-0ec2backup0lab001", InstanceType="t3.micro", MinCount=1, MaxCount=1
    )["Instances"]
    base = f"{lab.aws_url}/_lab/imds/{inst['InstanceId']}/latest"
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{base}/meta-data/instance-id", timeout=10)
    assert err.value.code == 401
    put = urllib.request.Request(
        f"{base}/api/token", method="PUT", headers={"X-aws-ec2-metadata-token-ttl-seconds": "60"}
    )
    with urllib.request.urlopen(put, timeout=10) as r:
        token = r.read().decode()

    def get(path: str) -> str:
        req = urllib.request.Request(f"{base}/{path}", headers={"X-aws-ec2-metadata-token": token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return str(r.read().decode())

    assert get("meta-data/instance-id") == inst["InstanceId"]
    assert get("meta-data/placement/availability-zone") == inst["Placement"]["AvailabilityZone"]
    role = get("meta-data/iam/security-credentials/")
    keys = json.loads(get(f"meta-data/iam/security-credentials/{role}"))
    # the role's keys work, as the instance's role
    sts = client(
        lab,
        "sts",
        creds={
            "aws_access_key_id": keys["AccessKeyId"],
            "aws_secret_access_key": keys["SecretAccessKey"],
            "aws_session_token": keys["Token"],
        },
    )
    assert f":assumed-role/{role}/" in sts.get_caller_identity()["Arn"]
    ec2.terminate_instances(InstanceIds=[inst["InstanceId"]])

"""Bad input: unknown ids over boto3 give AWS-shaped errors (a ClientError with an AWS error code
and an HTTP status below 500, never an HTML 500 page); the lab CLI answers unknown ids and
nonsense `lab seed` arguments with a non-zero exit and one line `error: ...` on stderr.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import ZONE, client, error_of, one_line_error, snapshot

UNKNOWN_VOLUME = "vol-0123456789abcdef0"
UNKNOWN_SNAPSHOT = "snap-0123456789abcdef0"
UNKNOWN_INSTANCE = "i-0123456789abcdef0"


@pytest.fixture(scope="module")
def known(lab: Any) -> dict[str, str]:
    """A real instance, a volume and a snapshot, to pair with unknown ids."""
    ec2 = client(lab, "ec2")
    instance_id = ec2.run_instances(
        ImageId="ami-0ec2backup0lab001",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": ZONE},
    )["Instances"][0]["InstanceId"]
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    return {"instance": instance_id, "volume": volume_id, "snapshot": snapshot(ec2, volume_id)}


# (name, service, call(client, known ids), expected AWS error code)
UNKNOWN_ID_CALLS: list[tuple[str, str, Callable[[Any, dict[str, str]], Any], str]] = [
    (
        "DescribeVolumes",
        "ec2",
        lambda c, k: c.describe_volumes(VolumeIds=[UNKNOWN_VOLUME]),
        "InvalidVolume.NotFound",
    ),
    (
        "DescribeSnapshots",
        "ec2",
        lambda c, k: c.describe_snapshots(SnapshotIds=[UNKNOWN_SNAPSHOT]),
        "InvalidSnapshot.NotFound",
    ),
    (
        "DescribeInstances",
        "ec2",
        lambda c, k: c.describe_instances(InstanceIds=[UNKNOWN_INSTANCE]),
        "InvalidInstanceID.NotFound",
    ),
    (
        "AttachVolume(unknown volume)",
        "ec2",
        lambda c, k: c.attach_volume(
            VolumeId=UNKNOWN_VOLUME, InstanceId=k["instance"], Device="/dev/sdz"
        ),
        "InvalidVolume.NotFound",
    ),
    (
        "AttachVolume(unknown instance)",
        "ec2",
        lambda c, k: c.attach_volume(
            VolumeId=k["volume"], InstanceId=UNKNOWN_INSTANCE, Device="/dev/sdz"
        ),
        "InvalidInstanceID.NotFound",
    ),
    (
        "DetachVolume",
        "ec2",
        lambda c, k: c.detach_volume(VolumeId=UNKNOWN_VOLUME),
        "InvalidVolume.NotFound",
    ),
    (
        "CreateSnapshot",
        "ec2",
        lambda c, k: c.create_snapshot(VolumeId=UNKNOWN_VOLUME),
        "InvalidVolume.NotFound",
    ),
    (
        "CreateSnapshots",
        "ec2",
        lambda c, k: c.create_snapshots(InstanceSpecification={"InstanceId": UNKNOWN_INSTANCE}),
        "InvalidInstanceID.NotFound",
    ),
    (
        "CreateVolume(unknown snapshot)",
        "ec2",
        lambda c, k: c.create_volume(SnapshotId=UNKNOWN_SNAPSHOT, AvailabilityZone=ZONE),
        "InvalidSnapshot.NotFound",
    ),
    (
        "CopySnapshot",
        "ec2",
        lambda c, k: c.copy_snapshot(SourceSnapshotId=UNKNOWN_SNAPSHOT, SourceRegion="us-east-1"),
        "InvalidSnapshot.NotFound",
    ),
    (
        "ModifySnapshotAttribute",
        "ec2",
        lambda c, k: c.modify_snapshot_attribute(
            SnapshotId=UNKNOWN_SNAPSHOT,
            Attribute="createVolumePermission",
            CreateVolumePermission={"Add": [{"UserId": "222222222222"}]},
        ),
        "InvalidSnapshot.NotFound",
    ),
    (
        "DeleteVolume",
        "ec2",
        lambda c, k: c.delete_volume(VolumeId=UNKNOWN_VOLUME),
        "InvalidVolume.NotFound",
    ),
    (
        "DeleteSnapshot",
        "ec2",
        lambda c, k: c.delete_snapshot(SnapshotId=UNKNOWN_SNAPSHOT),
        "InvalidSnapshot.NotFound",
    ),
    (
        "TerminateInstances",
        "ec2",
        lambda c, k: c.terminate_instances(InstanceIds=[UNKNOWN_INSTANCE]),
        "InvalidInstanceID.NotFound",
    ),
    (
        "GetSnapshotBlock(unknown snapshot)",
        "ebs",
        lambda c, k: c.get_snapshot_block(
            SnapshotId=UNKNOWN_SNAPSHOT, BlockIndex=0, BlockToken="token"
        ),
        "ResourceNotFoundException",
    ),
    (
        "ListSnapshotBlocks",
        "ebs",
        lambda c, k: c.list_snapshot_blocks(SnapshotId=UNKNOWN_SNAPSHOT),
        "ResourceNotFoundException",
    ),
    (
        "ListChangedBlocks(unknown second)",
        "ebs",
        lambda c, k: c.list_changed_blocks(
            FirstSnapshotId=k["snapshot"], SecondSnapshotId=UNKNOWN_SNAPSHOT
        ),
        "ResourceNotFoundException",
    ),
    (
        "ListChangedBlocks(unknown first)",
        "ebs",
        lambda c, k: c.list_changed_blocks(
            FirstSnapshotId=UNKNOWN_SNAPSHOT, SecondSnapshotId=k["snapshot"]
        ),
        "ResourceNotFoundException",
    ),
]


@pytest.mark.parametrize(
    ("service", "call", "code"),
    [pytest.param(s, f, c, id=name) for name, s, f, c in UNKNOWN_ID_CALLS],
)
def test_unknown_ids_give_aws_errors(
    lab: Any, known: dict[str, str], service: str, call: Callable[..., Any], code: str
) -> None:
    with pytest.raises(ClientError) as exc:
        call(client(lab, service), known)
    got_code, status = error_of(exc.value)
    assert got_code == code
    assert 400 <= status < 500


# The message names the unknown id, as AWS does ("The volume 'vol-...' does not exist.").
@pytest.mark.parametrize(
    ("service", "call", "code"),
    [pytest.param(s, f, c, id=name) for name, s, f, c in UNKNOWN_ID_CALLS],
)
def test_unknown_id_errors_name_the_id(
    lab: Any, known: dict[str, str], service: str, call: Callable[..., Any], code: str
) -> None:
    with pytest.raises(ClientError) as exc:
        call(client(lab, service), known)
    message = exc.value.response["Error"].get("Message") or ""
    assert any(i in message for i in (UNKNOWN_VOLUME, UNKNOWN_SNAPSHOT, UNKNOWN_INSTANCE))
    assert "{" not in message


# -- CLI ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("lab", "churn", UNKNOWN_VOLUME, "--fraction", "0.1"), id="churn"),
        pytest.param(("lab", "checksum", UNKNOWN_VOLUME), id="checksum-volume"),
        pytest.param(("lab", "checksum", UNKNOWN_SNAPSHOT), id="checksum-snapshot"),
        pytest.param(("lab", "checksum", "ami-12345678"), id="checksum-other-id"),
        pytest.param(("lab", "kill-instance", UNKNOWN_INSTANCE), id="kill-instance"),
    ],
)
def test_cli_unknown_ids_fail_with_one_line(lab: Any, args: tuple[str, ...]) -> None:
    out = lab.cli(*args, check=False)
    assert out.returncode != 0
    message = one_line_error(out.stderr)
    assert args[2] in message
    assert out.stdout == ""


def test_cli_churn_bad_fraction_fails_with_one_line(lab: Any) -> None:
    volume_id = client(lab, "ec2").create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    for fraction in ("0", "-0.5", "1.5"):
        out = lab.cli("lab", "churn", volume_id, "--fraction", fraction, check=False)
        assert out.returncode != 0
        assert "fraction" in one_line_error(out.stderr)


@pytest.mark.parametrize(
    "args",
    [
        pytest.param(("--instances", "0"), id="instances-0"),
        pytest.param(("--instances", "-2"), id="instances-negative"),
        pytest.param(("--instances", "100000"), id="instances-huge"),
        pytest.param(("--volumes", "-1"), id="volumes-negative"),
        pytest.param(("--volumes", "99"), id="volumes-too-many"),
        pytest.param(("--size-gib", "0"), id="size-0"),
        pytest.param(("--size-gib", "-8"), id="size-negative"),
        pytest.param(("--size-gib", "999999999"), id="size-huge"),
        pytest.param(("--fill", "1.5"), id="fill-over-1"),
        pytest.param(("--fill", "-0.1"), id="fill-negative"),
        pytest.param(("--encryption", "rot13"), id="encryption"),
        pytest.param(("--account", "12"), id="account"),
        pytest.param(("--region", "xx-nowhere-9"), id="region"),
        pytest.param(("--tag", "novalue"), id="tag"),
    ],
)
def test_seed_nonsense_fails_with_one_line(lab: Any, args: tuple[str, ...]) -> None:
    before = client(lab, "ec2").describe_volumes()["Volumes"]
    out = lab.cli("lab", "seed", *args, check=False)
    assert out.returncode != 0
    message = one_line_error(out.stderr)
    assert args[0].lstrip("-").split("-")[0] in message.replace("_", "-")
    assert out.stdout == ""
    # Nothing was created.
    assert len(client(lab, "ec2").describe_volumes()["Volumes"]) == len(before)


@pytest.mark.parametrize("args", [("--size-gib", "abc"), ("--instances", "many")])
def test_seed_non_numeric_fails_with_one_line(lab: Any, args: tuple[str, ...]) -> None:
    out = lab.cli("lab", "seed", *args, check=False)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert args[0] in one_line_error(out.stderr)

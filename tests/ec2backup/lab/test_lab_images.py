"""Images and instance shapes, as AWS has them: `lab seed --arch/--boot-mode` seeds instances
of that shape on matching instance types; RegisterImage keeps the architecture, boot mode and
ENA support it is given, refuses a name in use and keeps its snapshots in use; RunInstances
refuses an instance type that cannot run the image."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import ZONE, cli_json, client, error_of, one_line_error, snapshot


def _instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    found = ec2.describe_instances(InstanceIds=[instance_id])
    return dict(found["Reservations"][0]["Instances"][0])


@pytest.mark.parametrize(
    ("args", "arch", "boot_mode", "instance_type"),
    [
        (("--arch", "arm64"), "arm64", "uefi", "t4g.micro"),
        (("--arch", "x86_64", "--boot-mode", "uefi"), "x86_64", "uefi", "t3.micro"),
        ((), "x86_64", "legacy-bios", "t3.micro"),
    ],
)
def test_seed_shapes(
    lab: Any, args: tuple[str, ...], arch: str, boot_mode: str, instance_type: str
) -> None:
    out = cli_json(lab, "lab", "seed", "--volumes", "0", *args)
    described = _instance(client(lab, "ec2"), out["instances"][0]["instance_id"])
    assert described["Architecture"] == arch
    assert described["BootMode"] == boot_mode
    assert described["InstanceType"] == instance_type


def test_seed_refuses_arm64_legacy_bios(lab: Any) -> None:
    proc = lab.cli("lab", "seed", "--arch", "arm64", "--boot-mode", "legacy-bios", check=False)
    assert proc.returncode != 0
    assert "uefi" in one_line_error(proc.stderr)


def test_run_instances_refuses_an_architecture_mismatch(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    arm = cli_json(lab, "lab", "seed", "--volumes", "0", "--arch", "arm64")["instances"][0]
    with pytest.raises(ClientError) as err:
        ec2.run_instances(
            ImageId=arm["image_id"],
            InstanceType="t3.micro",
            MinCount=1,
            MaxCount=1,
            Placement={"AvailabilityZone": ZONE},
        )
    code, status = error_of(err.value)
    assert (code, status) == ("InvalidParameterValue", 400)
    assert "architecture" in str(err.value)


def test_registered_images_keep_their_shape_name_and_snapshots(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    snap = snapshot(ec2, volume_id)
    params: dict[str, Any] = {
        "Name": "lab-test-arm-image",
        "RootDeviceName": "/dev/xvda",
        "BlockDeviceMappings": [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": snap}}],
        "Architecture": "arm64",
        "BootMode": "uefi",
        "EnaSupport": True,
        "VirtualizationType": "hvm",
        "TagSpecifications": [{"ResourceType": "image", "Tags": [{"Key": "k", "Value": "v"}]}],
    }
    image_id = ec2.register_image(**params)["ImageId"]
    image = ec2.describe_images(ImageIds=[image_id])["Images"][0]
    assert (image["Architecture"], image["BootMode"], image["EnaSupport"]) == (
        "arm64",
        "uefi",
        True,
    )
    assert {"Key": "k", "Value": "v"} in image["Tags"]
    # A retry of the same registration (e.g. after a crash) is refused, as on AWS.
    with pytest.raises(ClientError) as dup:
        ec2.register_image(**params)
    assert error_of(dup.value)[0] == "InvalidAMIName.Duplicate"
    # The image keeps its snapshot in use until it is deregistered.
    with pytest.raises(ClientError) as in_use:
        ec2.delete_snapshot(SnapshotId=snap)
    assert error_of(in_use.value)[0] == "InvalidSnapshot.InUse"
    # An instance launched from it has its shape; an x86 type cannot run it.
    instance_id = ec2.run_instances(
        ImageId=image_id,
        InstanceType="t4g.micro",
        MinCount=1,
        MaxCount=1,
        Placement={"AvailabilityZone": ZONE},
    )["Instances"][0]["InstanceId"]
    assert _instance(ec2, instance_id)["Architecture"] == "arm64"
    assert _instance(ec2, instance_id)["BootMode"] == "uefi"
    with pytest.raises(ClientError):
        ec2.run_instances(ImageId=image_id, InstanceType="t3.micro", MinCount=1, MaxCount=1)
    ec2.terminate_instances(InstanceIds=[instance_id])
    ec2.deregister_image(ImageId=image_id)
    ec2.delete_snapshot(SnapshotId=snap)

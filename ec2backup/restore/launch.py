"""Restore delivery: volumes created from the snapshots, or an instance launched over an image
registered from them; cleanup of whatever a failed or cancelled restore made."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from typing import Any

from ec2backup import aws, installation
from ec2backup.models.restore import (
    CleanupRestoreOutput,
    FinishRestoreOutput,
    RestoredVolume,
    RestorePlan,
    RestoreVolumePlan,
)
from ec2backup.restore.plan import (
    PENDING_KEY,
    POLL_SECONDS,
    RESTORE_KEY,
    RESTORE_WAIT_SECONDS,
    TEMP_KEY,
    RestoreError,
    _token,
)

log = logging.getLogger("ec2backup.restore")


# ---- snapshots -> volumes or an instance ------------------------------------------------------
def image_name(restore_id: str) -> str:
    """The restore's image name: unique per account and Region, so a retry finds it."""
    return f"ec2backup-restore-{restore_id}"[:128]


def _image_named(ec2: Any, name: str) -> str | None:
    images = ec2.describe_images(Owners=["self"], Filters=[{"Name": "name", "Values": [name]}])
    found = [i["ImageId"] for i in images["Images"] if i.get("State") != "deregistered"]
    return found[0] if found else None


def register_image(ec2: Any, plan: RestorePlan, mappings: list[dict[str, Any]]) -> str:
    """The image the instance launches from, with the source instance's architecture, ENA
    support and boot mode (else a Graviton or UEFI instance does not boot). Idempotent: an
    image an earlier attempt registered is found by its name (RegisterImage itself would fail
    with InvalidAMIName.Duplicate). Tagged like everything the restore makes, so cleanup and
    the Janitor deregister one that a crash left behind."""
    name = image_name(plan.restore_id)
    existing = _image_named(ec2, name)
    if existing:
        return existing
    params: dict[str, Any] = {
        "Name": name,
        "RootDeviceName": plan.root_device or plan.volumes[0].device,
        "BlockDeviceMappings": mappings,
        "Architecture": plan.architecture,
        "VirtualizationType": "hvm",
        "Description": f"ec2backup restore {plan.restore_id}",
        "TagSpecifications": [{"ResourceType": "image", "Tags": _restore_tags(plan.restore_id)}],
    }
    if plan.ena_support is not None:
        params["EnaSupport"] = plan.ena_support
    if plan.boot_mode:
        params["BootMode"] = plan.boot_mode
    try:
        return str(ec2.register_image(**params)["ImageId"])
    except Exception as exc:
        found = (
            _image_named(ec2, name) if aws.error_code(exc) == "InvalidAMIName.Duplicate" else None
        )
        if found is None:
            raise
        return found


def deregister_images(ec2: Any, restore_id: str) -> list[str]:
    """Deregister every image the restore registered (an image is never delivered)."""
    images = ec2.describe_images(
        Owners=["self"],
        Filters=[
            {"Name": f"tag:{RESTORE_KEY}", "Values": [restore_id]},
            installation.installation_filter(),
        ],
    )["Images"]
    gone = []
    for image in images:
        try:
            ec2.deregister_image(ImageId=image["ImageId"])
        except Exception as exc:
            if aws.error_code(exc) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Unavailable"):
                raise
        gone.append(image["ImageId"])
    return gone


def _restore_tags(restore_id: str, extra: dict[str, str] | None = None) -> list[dict[str, str]]:
    tags = {
        **(extra or {}),
        RESTORE_KEY: restore_id,
        PENDING_KEY: restore_id,
        installation.INSTALLATION_TAG: installation.installation_id(),
    }
    return [{"Key": k, "Value": v} for k, v in tags.items() if not k.startswith("aws:")]


def _wait(
    check: Callable[[], bool], what: str, heartbeat: Callable[[str], None] = lambda _: None
) -> None:
    deadline = time.monotonic() + RESTORE_WAIT_SECONDS
    while not check():
        if time.monotonic() > deadline:
            raise RestoreError(f"timed out waiting for {what}")
        heartbeat(what)
        time.sleep(POLL_SECONDS)


def _volume_is(ec2: Any, volume_id: str, state: str) -> bool:
    return bool(ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["State"] == state)


def _ebs_mapping(v: RestoreVolumePlan, snapshot_id: str) -> dict[str, Any]:
    ebs: dict[str, Any] = {
        "SnapshotId": snapshot_id,
        "VolumeType": v.volume_type,
        "DeleteOnTermination": False,
    }
    if v.volume_type in ("gp3", "io1", "io2") and v.iops:
        ebs["Iops"] = v.iops
    if v.volume_type == "gp3" and v.throughput:
        ebs["Throughput"] = v.throughput
    if v.kms_key_id:
        ebs.update(Encrypted=True, KmsKeyId=v.kms_key_id)
    return ebs


def finish(
    plan: RestorePlan,
    snapshot_ids: dict[str, str],
    heartbeat: Callable[[str], None] = lambda _: None,
) -> FinishRestoreOutput:
    ec2 = aws.client("ec2", plan.region, plan.role_arn)
    if plan.kind == "volume":
        out = FinishRestoreOutput()
        for v in plan.volumes:
            params: dict[str, Any] = {
                "AvailabilityZone": plan.availability_zone,
                "ClientToken": _token(plan.restore_id, "volume", v.device),
                "TagSpecifications": [
                    {
                        "ResourceType": "volume",
                        "Tags": _restore_tags(
                            plan.restore_id, {"Name": f"restored {v.source_volume_id} {v.device}"}
                        ),
                    }
                ],
            }
            params.update(
                {
                    k: val
                    for k, val in _ebs_mapping(v, snapshot_ids[v.device]).items()
                    if k != "DeleteOnTermination"
                }
            )
            volume_id = ec2.create_volume(**params)["VolumeId"]
            log.info("volume %s created for %s", volume_id, v.device)
            _wait(
                functools.partial(_volume_is, ec2, volume_id, "available"),
                f"volume {volume_id}",
                heartbeat,
            )
            out.volumes.append(
                RestoredVolume(
                    device=v.device, volume_id=volume_id, source_volume_id=v.source_volume_id
                )
            )
        _hand_over(ec2, [v.volume_id for v in out.volumes])
        return out
    mappings = [
        {"DeviceName": v.device, "Ebs": _ebs_mapping(v, snapshot_ids[v.device])}
        for v in plan.volumes
    ]
    image_id = register_image(ec2, plan, mappings)
    heartbeat(f"image {image_id} registered")
    try:
        params = {
            "ImageId": image_id,
            "InstanceType": plan.instance_type,
            "MinCount": 1,
            "MaxCount": 1,
            "ClientToken": _token(plan.restore_id, "instance"),
            "Placement": {"AvailabilityZone": plan.availability_zone},
            "BlockDeviceMappings": mappings,
            "TagSpecifications": [
                {
                    "ResourceType": "instance",
                    "Tags": _restore_tags(plan.restore_id, plan.instance_tags),
                },
                {"ResourceType": "volume", "Tags": _restore_tags(plan.restore_id)},
            ],
        }
        if plan.subnet_id:
            params["SubnetId"] = plan.subnet_id
        instance_id = ec2.run_instances(**params)["Instances"][0]["InstanceId"]
        log.info("instance %s launched (restore %s)", instance_id, plan.restore_id)

        def running() -> bool:
            reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            return bool(reservations[0]["Instances"][0]["State"]["Name"] == "running")

        _wait(running, f"instance {instance_id}", heartbeat)
    finally:
        ec2.deregister_image(ImageId=image_id)
    instance = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    devices = {
        m["DeviceName"]: m["Ebs"]["VolumeId"]
        for m in instance.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }
    out = FinishRestoreOutput(
        instance_id=instance_id,
        volumes=[
            RestoredVolume(
                device=v.device,
                volume_id=devices.get(v.device, ""),
                source_volume_id=v.source_volume_id,
            )
            for v in plan.volumes
        ],
    )
    _hand_over(ec2, [instance_id, *(v.volume_id for v in out.volumes if v.volume_id)])
    return out


def _hand_over(ec2: Any, resource_ids: list[str]) -> None:
    """The last step of a restore: what it delivers is no longer temporary, nor the
    installation's to sweep (idempotent); only the provenance tag stays."""
    if resource_ids:
        ec2.delete_tags(
            Resources=resource_ids,
            Tags=[{"Key": PENDING_KEY}, {"Key": installation.INSTALLATION_TAG}],
        )


def cleanup(
    restore_id: str, region: str, role_arn: str | None, succeeded: bool
) -> CleanupRestoreOutput:
    """Release the restore worker (if any), delete temporary snapshots; after a failure also
    what the restore made and did not hand over (tagged pending): never what it delivered."""
    from ec2backup import workers
    from ec2backup.restore import worker as restore_worker

    ec2 = aws.client("ec2", region, role_arn)
    out = CleanupRestoreOutput()
    released = restore_worker.release(
        restore_id, region, role_arn, workers.session_secret_name(restore_id)
    )
    out.instances_terminated += released.instances_terminated
    out.volumes_deleted += released.volumes_deleted
    if not succeeded:
        reservations = ec2.describe_instances(
            Filters=[
                {"Name": f"tag:{PENDING_KEY}", "Values": [restore_id]},
                installation.installation_filter(),
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                },
            ]
        )["Reservations"]
        ids = [i["InstanceId"] for r in reservations for i in r["Instances"]]
        if ids:
            ec2.terminate_instances(InstanceIds=ids)
            log.info("instances terminated: %s", ", ".join(ids))
            out.instances_terminated += ids
        for vol in ec2.describe_volumes(
            Filters=[
                {"Name": f"tag:{PENDING_KEY}", "Values": [restore_id]},
                installation.installation_filter(),
            ]
        )["Volumes"]:
            if vol["State"] == "in-use":
                ec2.detach_volume(VolumeId=vol["VolumeId"], Force=True)
                _wait(
                    functools.partial(_volume_is, ec2, vol["VolumeId"], "available"),
                    f"detach of {vol['VolumeId']}",
                )
            ec2.delete_volume(VolumeId=vol["VolumeId"])
            log.info("volume %s deleted", vol["VolumeId"])
            out.volumes_deleted.append(vol["VolumeId"])
    # Images first: a registered image keeps its snapshots in use (InvalidSnapshot.InUse).
    out.images_deregistered = deregister_images(ec2, restore_id)
    for snap in ec2.describe_snapshots(
        OwnerIds=["self"],
        Filters=[
            {"Name": f"tag:{TEMP_KEY}", "Values": [restore_id]},
            installation.installation_filter(),
        ],
    )["Snapshots"]:
        try:
            ec2.delete_snapshot(SnapshotId=snap["SnapshotId"])
        except Exception as exc:
            if aws.error_code(exc) != "InvalidSnapshot.InUse":
                raise
            # Someone else's image uses it (ours are gone): leave it, say so, do not jam.
            out.snapshots_in_use.append(snap["SnapshotId"])
            continue
        out.snapshots_deleted.append(snap["SnapshotId"])
    return out

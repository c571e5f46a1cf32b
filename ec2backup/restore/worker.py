"""The restore's data path: a worker instance in the target writes a backup onto empty volumes.

Why a worker and empty volumes, not EBS-direct writes (`StartSnapshot`/`PutSnapshotBlock`):
on AWS, a block never put into an *encrypted* EBS-direct snapshot reads as random bytes (the
decryption of nothing; awslabs/coldsnap#395). A restore by direct writes would have to put
every hole of a sparse volume to be exact (a 1 TiB volume 10% full: 1.8 million extra Puts,
about $11 and hours at the per-snapshot rate), or write unencrypted and copy (plaintext at rest
in the target account, impossible where EBS encryption by default is on). A volume *created
empty* reads as zeros whatever its encryption, so the worker writes only the blocks the source
wrote (data and written zero blocks), then snapshots the volumes; holes cost nothing.

Security: the volumes are encrypted from creation with the target's key (the plan's KMS key
or the account's default EBS key); the repository password reaches the worker through a
per-restore secret in the target account, deleted with the worker. The orchestrator never
carries a volume's data. Every resource is tagged with the restore's id as its session, so the
restore's cleanup and the Janitor find and remove the worker, its volumes and its secret.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ec2backup import aws, installation, snapshots, tagcodec, workers
from ec2backup.models.restore import (
    ReleaseRestoreWorkerOutput,
    RestorePlan,
    RestoreWorker,
    RestoreWorkerVolume,
)
from ec2backup.restore.plan import RESTORE_KEY, TEMP_KEY, RestoreError
from ec2backup.userdata import HOST_TASK_QUEUE_TEMPLATE

# Which restored device a temporary snapshot of a worker volume is for (found again on retry).
DEVICE_KEY = "ec2backup:restore-device"


def provision(
    plan: RestorePlan,
    attempt: int,
    temporal_address: str,
    namespace: str,
    password: str | None,
    heartbeat: Callable[[str], None] = lambda _: None,
) -> RestoreWorker:
    """The restore's secret, one worker in the target zone, and one empty volume per restored
    volume attached to it (idempotent: a retry finds what an earlier attempt made)."""
    if not plan.secret_name or not plan.repository:
        raise RestoreError(f"restore {plan.restore_id}: no repository to restore from")
    if len(plan.volumes) > len(workers.WORKER_DEVICES):
        raise RestoreError(
            f"restore {plan.restore_id}: {len(plan.volumes)} volumes are more than one worker "
            f"can attach ({len(workers.WORKER_DEVICES)})"
        )
    workers.put_secret(
        plan.restore_id, plan.region, plan.role_arn, plan.secret_name, plan.repository, password
    )
    ec2 = aws.client("ec2", plan.region, plan.role_arn)
    instance_id = workers.launch(
        ec2,
        plan.restore_id,
        attempt,
        instance_type=plan.worker_instance_type,
        availability_zone=plan.availability_zone,
        subnet_id=plan.worker_subnet_id,
        security_group_ids=[],
        temporal_address=temporal_address,
        namespace=namespace,
        region=plan.region,
        in_backup_account=plan.role_arn is None,
        ssm=aws.client("ssm", plan.region, plan.role_arn),
        session_secret=plan.secret_name,
    )
    heartbeat(f"restore worker {instance_id} launched")
    if plan.role_arn is not None:
        workers.authorize_worker(plan.region, plan.role_arn, plan.secret_name, instance_id)
    wanted: list[workers.VolumeWant] = []
    devices = workers.WORKER_DEVICES[: len(plan.volumes)]
    for volume, worker_device in zip(plan.volumes, devices, strict=True):
        volume_type, iops, throughput, _copies = workers.plan_volume(volume.size_gib)
        create: dict[str, Any] = {
            "Size": volume.size_gib,
            "VolumeType": volume_type,
            "Iops": iops,
            "Throughput": throughput,
        }
        if volume.encrypted:
            create["Encrypted"] = True
            if volume.kms_key_id:
                create["KmsKeyId"] = volume.kms_key_id
        wanted.append(workers.VolumeWant(volume.source_volume_id, worker_device, create))
    volume_ids = workers.attach_volumes(
        ec2,
        plan.restore_id,
        instance_id,
        workers.existing_volumes(ec2, plan.restore_id),
        wanted,
        availability_zone=plan.availability_zone,
        heartbeat=heartbeat,
    )
    volumes = [
        RestoreWorkerVolume(device=volume.device, volume_id=volume_id, worker_device=device)
        for volume, volume_id, device in zip(plan.volumes, volume_ids, devices, strict=True)
    ]
    return RestoreWorker(
        instance_id=instance_id,
        task_queue=HOST_TASK_QUEUE_TEMPLATE.format(instance_id=instance_id),
        volumes=volumes,
    )


def snapshot_volumes(
    plan: RestorePlan, worker: RestoreWorker, heartbeat: Callable[[str], None] = lambda _: None
) -> dict[str, str]:
    """Temporary snapshots of the written worker volumes (device -> snapshot id), completed.
    Idempotent: a snapshot an earlier attempt started is found by its tags."""
    ec2 = aws.client("ec2", plan.region, plan.role_arn)
    found: dict[str, str] = {}
    for snap in ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{TEMP_KEY}", "Values": [plan.restore_id]}]
    )["Snapshots"]:
        device = tagcodec.tag_value(snap.get("Tags"), DEVICE_KEY)
        if device and snap.get("State") != "error":
            found[device] = snap["SnapshotId"]
    for volume in worker.volumes:
        if volume.device in found:
            continue
        heartbeat(f"{volume.device}: snapshot of {volume.volume_id}")
        tags = {
            RESTORE_KEY: plan.restore_id,
            TEMP_KEY: plan.restore_id,
            DEVICE_KEY: volume.device,
            installation.INSTALLATION_TAG: installation.installation_id(),
        }
        found[volume.device] = ec2.create_snapshot(
            VolumeId=volume.volume_id,
            Description=f"ec2backup restore {plan.restore_id} {volume.device}",
            TagSpecifications=[
                {
                    "ResourceType": "snapshot",
                    "Tags": [{"Key": k, "Value": v} for k, v in tags.items()],
                }
            ],
        )["SnapshotId"]
    wanted = [found[v.device] for v in worker.volumes]
    snapshots.wait_completed(
        plan.region, plan.role_arn, wanted, lambda done, total: heartbeat(f"{done}/{total}")
    )
    return {v.device: found[v.device] for v in worker.volumes}


def release(
    restore_id: str,
    region: str,
    role_arn: str | None,
    secret_name: str | None,
    only_instance_id: str | None = None,
    heartbeat: Callable[[str], None] = lambda _: None,
    keep_volumes: bool = False,
) -> ReleaseRestoreWorkerOutput:
    """Terminate the restore's workers, delete their volumes (unless `keep_volumes`, for one
    lost instance: the next worker attaches them) and (unless only one instance is let go) its
    secret. Idempotent."""
    out = workers.release(
        restore_id,
        region,
        role_arn,
        secret_name,
        only_instance_id,
        heartbeat=heartbeat,
        keep_volumes=keep_volumes,
    )
    return ReleaseRestoreWorkerOutput(
        instances_terminated=out.instances_terminated, volumes_deleted=out.volumes_deleted
    )

"""Crash-consistent snapshot sets with encrypted metadata tags, and the catalog read back from
those tags alone (no database).

Idempotency: every snapshot of a session carries the plain tag `ec2backup:session=<id>` from
its creation (TagSpecifications), so a retried call finds the set instead of making a second.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from botocore.exceptions import ClientError
from pydantic import BaseModel

from ec2backup import aws, tagcodec
from ec2backup.errors import NotFoundError, UserError, short_error
from ec2backup.models.snapshots import SnapshotLockSpec, SnapshotMember, SnapshotSet

# Poll interval while snapshots are pending; the call itself heartbeats in between.
SNAPSHOT_POLL_SECONDS = 1.0
# DescribeLockedSnapshots takes this many SnapshotIds per call (its MaxResults ceiling).
LOCK_DESCRIBE_BATCH = 1000

log = logging.getLogger("ec2backup.snapshots")


class SnapshotError(UserError):
    pass


def set_id_for(session_id: str) -> str:
    """Deterministic set id: the same session always names the same set."""
    import hashlib

    return "set-" + hashlib.sha256(session_id.encode()).hexdigest()[:16]


def _default_key_arn(kms: Any) -> str | None:
    try:
        return str(kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"])
    except Exception:
        return None


def _describe_instance(ec2: Any, instance_id: str) -> dict[str, Any]:
    try:
        reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
    except Exception as exc:
        if aws.error_code(exc).startswith("InvalidInstanceID"):
            raise NotFoundError(f"instance {instance_id} does not exist") from exc
        raise
    instances = [i for r in reservations for i in r["Instances"]]
    if not instances:
        raise NotFoundError(f"instance {instance_id} does not exist")
    instance: dict[str, Any] = instances[0]
    if instance["State"]["Name"] in ("terminated", "shutting-down"):
        raise SnapshotError(f"instance {instance_id} is {instance['State']['Name']}")
    return instance


class InstanceShape(BaseModel):
    """What an image registered from the instance's snapshots must say to boot it again."""

    architecture: str | None = None
    ena_support: bool | None = None
    boot_mode: str | None = None


def instance_shape(ec2: Any, instance: dict[str, Any]) -> InstanceShape:
    """Architecture, ENA support and boot mode of a running instance. Its boot mode comes from
    DescribeInstances (`BootMode`, `CurrentInstanceBootMode`) or else from its image; an image
    without one boots as EC2 defaults it: uefi on arm64, legacy-bios on x86_64."""
    architecture = instance.get("Architecture")
    boot_mode = instance.get("CurrentInstanceBootMode") or instance.get("BootMode")
    if not boot_mode and instance.get("ImageId"):
        try:
            images = ec2.describe_images(ImageIds=[instance["ImageId"]])["Images"]
        except Exception as exc:  # the image may be gone: fall back to EC2's default
            if aws.is_transient(exc):
                raise
            images = []
        boot_mode = images[0].get("BootMode") if images else None
    if not boot_mode and architecture:
        boot_mode = "uefi" if architecture == "arm64" else "legacy-bios"
    ena = instance.get("EnaSupport")
    return InstanceShape(
        architecture=architecture,
        ena_support=None if ena is None else bool(ena),
        boot_mode=boot_mode,
    )


def session_snapshots(ec2: Any, session_id: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    kwargs: dict[str, Any] = {
        "OwnerIds": ["self"],
        "Filters": [{"Name": f"tag:{tagcodec.SESSION_KEY}", "Values": [session_id]}],
    }
    while True:
        page = ec2.describe_snapshots(**kwargs)
        found.extend(page["Snapshots"])
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def create_snapshot_set(
    *,
    session_id: str,
    instance_id: str,
    region: str,
    role_arn: str | None,
    policy_name: str,
    installation_key: bytes,
    created: dt.datetime | None = None,
) -> SnapshotSet:
    """One multi-volume crash-consistent set, tagged; returns the existing set on a retry."""
    ec2 = aws.client("ec2", region, role_arn)
    kms = aws.client("kms", region, role_arn)
    account = aws.caller_account(region, role_arn)
    instance = _describe_instance(ec2, instance_id)
    devices = {
        m["Ebs"]["VolumeId"]: m["DeviceName"]
        for m in instance.get("BlockDeviceMappings", [])
        if "Ebs" in m
    }
    if not devices:
        raise SnapshotError(f"instance {instance_id} has no EBS volumes")
    volumes = {v["VolumeId"]: v for v in ec2.describe_volumes(VolumeIds=list(devices))["Volumes"]}
    set_id = set_id_for(session_id)
    existing = session_snapshots(ec2, session_id)
    if existing:
        snaps = existing
    else:
        user_tags = max((len(v.get("Tags", [])) for v in volumes.values()), default=0)
        if tagcodec.payload_tag_budget(user_tags) < 4:
            raise SnapshotError(
                f"instance {instance_id}: a volume has {user_tags} tags; ec2backup needs 7 of "
                f"the {tagcodec.MAX_TAGS_PER_RESOURCE} tags a snapshot may carry"
            )
        snaps = ec2.create_snapshots(
            InstanceSpecification={"InstanceId": instance_id, "ExcludeBootVolume": False},
            Description=f"ec2backup {policy_name} {session_id}",
            CopyTagsFromSource="volume",
            TagSpecifications=[
                {"ResourceType": "snapshot", "Tags": tagcodec.plain_tags(set_id, session_id)}
            ],
        )["Snapshots"]
        log.info(
            "snapshot set %s of %s created: %s",
            set_id,
            instance_id,
            ", ".join(s["SnapshotId"] for s in snaps),
        )
    default_key = _default_key_arn(kms)
    shape = instance_shape(ec2, instance)
    by_volume = {s["VolumeId"]: s for s in snaps}
    ordered = sorted(by_volume, key=lambda v: devices.get(v, "~"))
    instance_tags = {
        t["Key"]: t["Value"] for t in instance.get("Tags", []) if not t["Key"].startswith("aws:")
    }
    members = []
    now = created or dt.datetime.now(dt.UTC)
    for index, volume_id in enumerate(ordered):
        snap = by_volume[volume_id]
        volume = volumes.get(volume_id, {})
        kms_key = volume.get("KmsKeyId") or snap.get("KmsKeyId")
        member = SnapshotMember(
            snapshot_id=snap["SnapshotId"],
            volume_id=volume_id,
            device=devices.get(volume_id, "unknown"),
            # The snapshot's size, not the volume's as described before it was taken: a
            # volume grown in between has a larger snapshot.
            size_gib=int(snap.get("VolumeSize") or volume.get("Size", 0)),
            encrypted=bool(volume.get("Encrypted")),
            kms_key_id=kms_key,
            default_key=bool(volume.get("Encrypted"))
            and kms_key is not None
            and kms_key == default_key,
            volume_type=volume.get("VolumeType"),
            iops=volume.get("Iops"),
            throughput=volume.get("Throughput"),
        )
        members.append(member)
        if tagcodec.tag_value(snap.get("Tags"), f"{tagcodec.PAYLOAD_PREFIX}0") is None:
            meta = tagcodec.SnapshotMetadata(
                set_id=set_id,
                policy=policy_name,
                session_id=session_id,
                instance_id=instance_id,
                instance_type=instance.get("InstanceType"),
                architecture=shape.architecture,
                ena_support=shape.ena_support,
                boot_mode=shape.boot_mode,
                availability_zone=instance.get("Placement", {}).get("AvailabilityZone"),
                subnet_id=instance.get("SubnetId"),
                region=region,
                account=account,
                volume_id=volume_id,
                device=member.device,
                root_device=instance.get("RootDeviceName"),
                size_gib=member.size_gib,
                volume_type=volume.get("VolumeType"),
                iops=volume.get("Iops"),
                throughput=volume.get("Throughput"),
                index=index,
                count=len(ordered),
                encrypted=member.encrypted,
                kms_key_id=member.kms_key_id,
                created=now,
                instance_tags=instance_tags,
            )
            ec2.create_tags(
                Resources=[member.snapshot_id],
                Tags=tagcodec.encode(meta, installation_key, member.snapshot_id),
            )
    return SnapshotSet(
        set_id=set_id,
        region=region,
        account_role_arn=role_arn,
        account=account,
        instance_id=instance_id,
        availability_zone=instance.get("Placement", {}).get("AvailabilityZone", f"{region}a"),
        members=members,
        instance_type=instance.get("InstanceType"),
        root_device=instance.get("RootDeviceName"),
        architecture=shape.architecture,
        ena_support=shape.ena_support,
        boot_mode=shape.boot_mode,
        subnet_id=instance.get("SubnetId"),
        instance_tags=instance_tags,
        created=now,
    )


def lock_snapshots(
    region: str, role_arn: str | None, snapshot_ids: list[str], spec: SnapshotLockSpec
) -> dt.datetime:
    """Lock every snapshot (EBS snapshot lock) for `spec.days`; returns when the locks end.
    Idempotent: locking again with the same settings only restarts nothing that is running
    (a rerun extends a lock by at most the time since the first run)."""
    ec2 = aws.client("ec2", region, role_arn)
    ends: list[dt.datetime] = []
    for snapshot_id in snapshot_ids:
        params: dict[str, Any] = {
            "SnapshotId": snapshot_id,
            "LockMode": spec.mode,
            "LockDuration": spec.days,
        }
        if spec.cool_off_hours is not None:
            params["CoolOffPeriod"] = spec.cool_off_hours
        try:
            out = ec2.lock_snapshot(**params)
        except ClientError as exc:
            if aws.error_code(exc) == "OperationNotPermitted":
                # A retried activity: the lock is already past its cooling-off, as we set it.
                current = locked_snapshots(ec2, [snapshot_id]).get(snapshot_id)
                if current is not None:
                    ends.append(current["LockExpiresOn"])
                    continue
            raise SnapshotError(
                f"cannot lock snapshot {snapshot_id} ({spec.mode}, {spec.days} days): "
                f"{short_error(exc)}"
            ) from exc
        log.info("locked snapshot %s (%s) until %s", snapshot_id, spec.mode, out["LockExpiresOn"])
        ends.append(out["LockExpiresOn"])
    return min(ends) if ends else dt.datetime.now(dt.UTC)


def locked_snapshots(ec2: Any, snapshot_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The snapshots among these whose lock has not expired: id -> DescribeLockedSnapshots
    entry (LockState, LockExpiresOn, ...)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(snapshot_ids), LOCK_DESCRIBE_BATCH):
        batch = snapshot_ids[start : start + LOCK_DESCRIBE_BATCH]
        out = ec2.describe_locked_snapshots(SnapshotIds=batch)
        for entry in out.get("Snapshots", []):
            if entry.get("LockState") != "expired":
                found[entry["SnapshotId"]] = entry
    return found


def wait_completed(
    region: str,
    role_arn: str | None,
    snapshot_ids: list[str],
    on_poll: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
) -> list[str]:
    """Poll until every snapshot is `completed`; an `error` state fails at once."""
    ec2 = aws.client("ec2", region, role_arn)
    deadline = time.monotonic() + timeout if timeout else None
    while True:
        snaps = ec2.describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
        states = {s["SnapshotId"]: s["State"] for s in snaps}
        failed = [s for s, st in states.items() if st == "error"]
        if failed:
            raise SnapshotError(f"snapshot {failed[0]} failed (state error)")
        done = sum(1 for st in states.values() if st == "completed")
        if on_poll:
            on_poll(done, len(snapshot_ids))
        if done == len(snapshot_ids):
            return snapshot_ids
        if deadline and time.monotonic() > deadline:
            raise SnapshotError(f"snapshots not completed in time: {states}")
        time.sleep(SNAPSHOT_POLL_SECONDS)


# ---- the catalog, rebuilt from tags --------------------------------------------------------------
class CatalogSnapshot(BaseModel):
    snapshot_id: str
    state: str
    volume_id: str
    device: str
    size_gib: int
    index: int
    encrypted: bool
    kms_key_id: str | None = None


class CatalogEntry(BaseModel):
    """A cloud-native restore point: one snapshot set, as its tags describe it."""

    set_id: str
    region: str
    account: str
    instance_id: str
    policy: str
    session_id: str
    created: dt.datetime
    replica: bool
    snapshots: list[CatalogSnapshot]
    complete: bool
    backup_id: str | None = None  # the image-level restore point made from this set
    backup_repository: str | None = None  # ... and its repository (both from the tags)


class CatalogProblem(BaseModel):
    snapshot_id: str
    problem: str


def catalog(
    region: str, role_arn: str | None, installation_key: bytes, instance_id: str | None = None
) -> tuple[list[CatalogEntry], list[CatalogProblem]]:
    """Restore points rebuilt from the encrypted tags alone; bad tags are reported, skipped."""
    ec2 = aws.client("ec2", region, role_arn)
    account = aws.caller_account(region, role_arn)
    kwargs: dict[str, Any] = {
        "OwnerIds": ["self"],
        "Filters": [{"Name": f"tag:{tagcodec.MANAGED_KEY}", "Values": ["true"]}],
    }
    sets: dict[tuple[str, str], list[tuple[dict[str, Any], tagcodec.SnapshotMetadata]]] = {}
    problems: list[CatalogProblem] = []
    while True:
        page = ec2.describe_snapshots(**kwargs)
        for snap in page["Snapshots"]:
            try:
                meta = tagcodec.decode(snap.get("Tags", []), installation_key, snap["SnapshotId"])
            except tagcodec.TagError as exc:
                problems.append(CatalogProblem(snapshot_id=snap["SnapshotId"], problem=str(exc)))
                continue
            if instance_id and meta.instance_id != instance_id:
                continue
            sets.setdefault((meta.set_id, meta.session_id), []).append((snap, meta))
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    entries = []
    for (set_id, _session), members in sets.items():
        first = members[0][1]
        snaps = sorted(
            (
                CatalogSnapshot(
                    snapshot_id=s["SnapshotId"],
                    state=s["State"],
                    volume_id=m.volume_id,
                    device=m.device,
                    size_gib=m.size_gib,
                    index=m.index,
                    encrypted=bool(s.get("Encrypted")),
                    kms_key_id=s.get("KmsKeyId"),
                )
                for s, m in members
            ),
            key=lambda c: c.index,
        )
        entries.append(
            CatalogEntry(
                set_id=set_id,
                region=region,
                account=account,
                instance_id=first.instance_id,
                policy=first.policy,
                session_id=first.session_id,
                created=first.created,
                replica=first.source_snapshot_id is not None,
                snapshots=snaps,
                complete=len(snaps) == first.count,
                backup_id=next(
                    (m.restore_point_id for _, m in members if m.restore_point_id), None
                ),
                backup_repository=next((m.repository for _, m in members if m.repository), None),
            )
        )
    entries.sort(key=lambda e: e.created)
    return entries, problems


def record_backup(
    snapshot_set: SnapshotSet, restore_point_id: str, repository: str, installation_key: bytes
) -> int:
    """Name the image-level restore point made from this set (and its repository) in the
    encrypted tags of each member, so the catalog finds the backup from the set alone.
    Idempotent; a member whose tag budget is full is left as it is (the catalog then finds the
    backup by its repository). Returns how many snapshots were updated."""
    ec2 = aws.client("ec2", snapshot_set.region, snapshot_set.account_role_arn)
    ids = [m.snapshot_id for m in snapshot_set.members]
    updated = 0
    for snap in ec2.describe_snapshots(SnapshotIds=ids)["Snapshots"]:
        sid = snap["SnapshotId"]
        tags = snap.get("Tags", [])
        meta = tagcodec.decode(tags, installation_key, sid)
        if meta.restore_point_id == restore_point_id and meta.repository == repository:
            continue
        meta = meta.model_copy(
            update={"restore_point_id": restore_point_id, "repository": repository}
        )
        payload = tagcodec.encode(meta, installation_key, sid)
        ours = [t for t in tags if tagcodec.is_payload_key(t["Key"])]
        user = [t for t in tags if not t["Key"].startswith("ec2backup:")]
        if len(payload) > tagcodec.payload_tag_budget(len(user)):
            continue
        ec2.create_tags(Resources=[sid], Tags=payload)
        stale = [{"Key": t["Key"]} for t in ours if t["Key"] not in {p["Key"] for p in payload}]
        if stale:
            ec2.delete_tags(Resources=[sid], Tags=stale)
        updated += 1
    return updated

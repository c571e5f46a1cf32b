"""Restore planning: which snapshots (own, replica, or to be built from a backup) become which
volumes, in which zone, with which shape. Shared names of the restore package live here."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from ec2backup import aws, replication, tagcodec
from ec2backup.errors import NotFoundError, UserError
from ec2backup.models.restore import (
    RestoreInput,
    RestorePlan,
    RestoreVolumePlan,
)
from ec2backup.models.session import ReplicationSpec
from ec2backup.models.snapshots import SnapshotMember, SnapshotSet
from ec2backup.repository.restorepoint import RestorePointSource

# Provenance: everything a restore creates, delivered or not, names the restore.
RESTORE_KEY = "ec2backup:restore"
# Not yet handed over: set at creation, removed from what the restore delivers once it is
# complete. Cleanup after a failure and the Janitor only ever touch resources carrying it, so a
# delivered volume or instance survives Temporal forgetting its Restore.
PENDING_KEY = "ec2backup:restore-pending"

TEMP_KEY = "ec2backup:restore-temp"

EBS_BLOCK_SIZE = 512 * 1024

GIB = 1024**3

POLL_SECONDS = 0.5

RESTORE_WAIT_SECONDS = 3600.0

# How often a data restore reports progress (and learns of a cancel).
HEARTBEAT_SECONDS = 1.0


class RestoreError(UserError):
    pass


def _token(*parts: str) -> str:
    return hashlib.sha256("#".join(parts).encode()).hexdigest()[:64]


# ---- resolving what to restore -----------------------------------------------------------------
def _set_members(
    region: str, role_arn: str | None, set_id: str, installation_key: bytes, replicas: bool
) -> list[tuple[str, tagcodec.SnapshotMetadata]]:
    ec2 = aws.client("ec2", region, role_arn)
    found = []
    kwargs: dict[str, Any] = {
        "OwnerIds": ["self"],
        "Filters": [{"Name": f"tag:{tagcodec.SET_KEY}", "Values": [set_id]}],
    }
    while True:
        page = ec2.describe_snapshots(**kwargs)
        for snap in page["Snapshots"]:
            try:
                meta = tagcodec.decode(snap.get("Tags", []), installation_key, snap["SnapshotId"])
            except tagcodec.TagError:
                continue  # never trust a foreign or tampered tag
            if (meta.source_snapshot_id is not None) == replicas and snap["State"] == "completed":
                found.append((snap["SnapshotId"], meta))
        if not page.get("NextToken"):
            break
        kwargs["NextToken"] = page["NextToken"]
    found.sort(key=lambda m: m[1].index)
    return found


def _snapshot_set(
    members: list[tuple[str, tagcodec.SnapshotMetadata]], region: str, role_arn: str | None
) -> SnapshotSet:
    first = members[0][1]
    return SnapshotSet(
        set_id=first.set_id,
        region=region,
        account_role_arn=role_arn,
        account=first.account,
        instance_id=first.instance_id,
        availability_zone=first.availability_zone or f"{region}a",
        members=[
            SnapshotMember(
                snapshot_id=sid,
                volume_id=m.volume_id,
                device=m.device,
                size_gib=m.size_gib,
                encrypted=m.encrypted,
                kms_key_id=m.kms_key_id,
            )
            for sid, m in members
        ],
    )


def _pick(volumes: list[RestoreVolumePlan], req: RestoreInput) -> list[RestoreVolumePlan]:
    if req.kind == "instance":
        return volumes
    if not req.device and not req.volume_id:
        raise RestoreError("restore volume needs --device or --volume-id")
    chosen = [
        v
        for v in volumes
        if (req.device and v.device == req.device)
        or (req.volume_id and v.source_volume_id == req.volume_id)
    ]
    if not chosen:
        have = ", ".join(f"{v.device}={v.source_volume_id}" for v in volumes)
        raise NotFoundError(
            f"no volume {req.device or req.volume_id} in restore point "
            f"{req.restore_point_id} (it has {have})"
        )
    return chosen[:1]


def locate(
    req: RestoreInput, installation_key: bytes, password: str | None
) -> tuple[RestoreInput, str | None]:
    """The request with the restore point's place filled in from the catalog, and why that
    source, when the id alone does not say where to read (no `repository`, and not a snapshot
    set restored from its snapshots); the request as it is otherwise."""
    from ec2backup import catalog

    whole_set_id = re.fullmatch(r"set-[0-9a-f]{16}", req.restore_point_id) is not None
    if req.repository or (whole_set_id and req.source in (None, "snapshot")):
        return req, None  # the id says where: the set in the request's place, or the repository
    found = catalog.locate(
        req.restore_point_id,
        installation_key,
        password.encode() if password is not None else None,
        source=req.source,
        places=[(req.region, req.account_role_arn)],
    )
    update: dict[str, Any] = {
        "source": found.source,
        "restore_point_id": found.restore_point_id,
        "repository": found.repository,
    }
    if found.source == "snapshot" and found.region and found.region != req.region:
        # Read the set where it is; restore where the request said (its Region by default).
        update |= {"region": found.region, "to_region": req.to_region or req.region}
    if found.source == "snapshot" and found.account_role_arn != req.account_role_arn:
        update |= {
            "account_role_arn": found.account_role_arn,
            "to_account_role_arn": req.to_account_role_arn or req.account_role_arn,
        }
    return req.model_copy(update=update), f"source: {found.source} ({found.why})"


def plan_restore(
    restore_id: str,
    req: RestoreInput,
    installation_key: bytes,
    password: str | None,
    *,
    copy_missing: bool = True,
    max_copies: int = replication.MAX_CONCURRENT_COPIES,
) -> RestorePlan:
    """The restore's plan; a snapshot set restored into another Region or account without
    replicas there is copied first, at most `max_copies` at once (unless `copy_missing` is
    False or it is a dry run: `copies_needed` then counts what would be copied)."""
    req, source_reason = locate(req, installation_key, password)
    is_set = req.restore_point_id.startswith("set-")
    source = req.source or ("snapshot" if is_set else "backup")
    region = req.to_region or req.region
    role_arn = req.to_account_role_arn or req.account_role_arn
    target_account = aws.caller_account(region, role_arn)
    checks: list[str] = []
    shape: dict[str, Any] = {}
    volumes: list[RestoreVolumePlan] = []
    backup_id = None
    set_id = req.restore_point_id if is_set else None
    rp_source = RestorePointSource()
    copies_needed = 0

    if source in ("backup", "archive") or not is_set:
        from ec2backup.repository.repo import Repository

        if not req.repository:
            raise RestoreError("restoring from a backup needs --repo (the repository URL)")
        if password is None:
            raise RestoreError(
                "no repository password on the orchestrator (EC2BACKUP_REPO_PASSWORD)"
            )
        repo = Repository.open(req.repository, password.encode())
        archived = repo.config.data_storage_class is not None
        if archived and source != "archive":
            raise RestoreError(
                f"{req.repository} is an archive repository ({repo.config.data_storage_class}): "
                "use --source archive (its data is retrieved first)"
            )
        if source == "archive" and not archived:
            raise RestoreError(f"--source archive: {req.repository} is not an archive repository")
        if source == "archive":
            from ec2backup.archive.copy import RETRIEVAL_TIERS

            if req.retrieval_tier not in RETRIEVAL_TIERS:
                raise RestoreError(
                    f"--retrieval-tier: {req.retrieval_tier} is not one of "
                    f"{', '.join(RETRIEVAL_TIERS)}"
                )
        if source == "archive" and not is_set:
            # The archived copy's own id, or the hot restore point it was archived from.
            by_origin = [
                (rid, rp)
                for rid, rp in repo.list_restore_points()
                if rp.tags.get("archived_from", "").startswith(req.restore_point_id)
            ]
            if len(by_origin) == 1:
                backup_id, rp = by_origin[0]
            else:
                backup_id, rp = repo.load_restore_point(req.restore_point_id)
        elif is_set:
            matches = [
                (rid, rp)
                for rid, rp in repo.list_restore_points()
                if rp.source.snapshot_set_id == req.restore_point_id
            ]
            if not matches:
                raise NotFoundError(
                    f"no backup of snapshot set {req.restore_point_id} in {req.repository}"
                )
            backup_id, rp = max(matches, key=lambda m: m[1].time)
        else:
            backup_id, rp = repo.load_restore_point(req.restore_point_id)
        rp_source = rp.source
        set_id = set_id or rp.source.snapshot_set_id
        for i, record in enumerate(rp.volumes):
            meta = record.metadata
            for page in record.pages:
                if page is not None and not repo.backend.exists(repo.object_name("map", page)):
                    raise RestoreError(
                        f"restore point {backup_id[:12]} is not readable: map "
                        f"page {page[:12]} of {record.name} is missing"
                    )
            volumes.append(
                RestoreVolumePlan(
                    device=record.device or f"/dev/sd{chr(ord('f') + i)}",
                    source_volume_id=meta.source_volume_id or record.name,
                    size_gib=int(meta.size_gib or -(-record.size // GIB)),
                    volume_type=req.volume_type or meta.volume_type or "gp3",
                    iops=meta.iops,
                    throughput=meta.throughput,
                    record_index=i,
                    encrypted=bool(meta.encrypted) or bool(req.kms_key_id),
                    kms_key_id=req.kms_key_id,
                )
            )
        checks.append(
            f"restore point {backup_id[:12]} readable in {req.repository} "
            f"({len(rp.volumes)} volumes, map pages present, key opens)"
        )
        if source == "archive":
            checks.append(
                f"archived in {repo.config.data_storage_class}: its packs are retrieved "
                f"({req.retrieval_tier} tier) before the data is read"
            )
        shape = {
            "instance_type": rp_source.instance_type,
            "root_device": rp_source.root_device,
            "architecture": rp_source.architecture,
            "ena_support": rp_source.ena_support,
            "boot_mode": rp_source.boot_mode,
            "instance_tags": rp_source.instance_tags or {},
            "availability_zone": rp_source.availability_zone,
            "source_region": rp_source.region,
        }
    if source == "snapshot":
        if set_id is None:
            raise RestoreError(f"restore point {req.restore_point_id} has no snapshot set")
        src_region = rp_source.region or req.region
        members = _set_members(
            src_region, req.account_role_arn, set_id, installation_key, replicas=False
        )
        if not members:
            raise NotFoundError(f"snapshot set {set_id} not found in {src_region}")
        first = members[0][1]
        same_place = region == src_region and target_account == first.account
        if same_place:
            targets = {m.volume_id: sid for sid, m in members}
        else:
            replicas = _set_members(region, role_arn, set_id, installation_key, replicas=True)
            targets = {m.volume_id: sid for sid, m in replicas}
            if len(targets) < len(members):
                copies_needed = len(members) - len(targets)
                checks.append(
                    f"replicas of {set_id} in {region}/{target_account}: "
                    f"{len(targets)} of {len(members)}; the rest are copied now"
                )
                if not req.dry_run and copy_missing:
                    out = replication.replicate_set(
                        session_id=restore_id,
                        snapshot_set=_snapshot_set(members, src_region, req.account_role_arn),
                        target=ReplicationSpec(
                            region=region, account_role_arn=role_arn, kms_key_id=req.kms_key_id
                        ),
                        installation_key=installation_key,
                        max_concurrent=max_copies,
                    )
                    targets = {
                        m.volume_id: rid
                        for (_, m), rid in zip(members, out.replica_ids, strict=True)
                    }
        volumes = [
            RestoreVolumePlan(
                device=m.device,
                source_volume_id=m.volume_id,
                size_gib=m.size_gib,
                volume_type=req.volume_type or m.volume_type or "gp3",
                iops=m.iops,
                throughput=m.throughput,
                snapshot_id=targets.get(m.volume_id),
                encrypted=m.encrypted or bool(req.kms_key_id),
                kms_key_id=req.kms_key_id,
            )
            for _, m in members
        ]
        shape = {
            "instance_type": first.instance_type,
            "root_device": first.root_device,
            "architecture": first.architecture,
            "ena_support": first.ena_support,
            "boot_mode": first.boot_mode,
            "instance_tags": first.instance_tags,
            "availability_zone": first.availability_zone,
            "source_region": src_region,
        }
        checks.append(f"snapshot set {set_id}: {len(members)} completed snapshots")
    volumes = _pick(volumes, req)
    az = _target_zone(req, region, role_arn, shape, checks)
    instance_type = req.instance_type or shape.get("instance_type")
    if req.kind == "instance":
        if not instance_type:
            raise RestoreError(
                "the restore point does not record an instance type: give --instance-type"
            )
        _check_instance_type(region, role_arn, instance_type, checks)
    if req.kms_key_id:
        kms = aws.client("kms", region, role_arn)
        try:
            kms.describe_key(KeyId=req.kms_key_id)
        except Exception as exc:
            raise RestoreError(
                f"KMS key {req.kms_key_id} is not usable in {region}: {aws.error_code(exc) or exc}"
            ) from exc
        checks.append(f"KMS key {req.kms_key_id} usable")
    return RestorePlan(
        restore_id=restore_id,
        kind=req.kind,
        source=source,
        repository=req.repository,
        backup_id=backup_id,
        region=region,
        role_arn=role_arn,
        availability_zone=az,
        subnet_id=req.subnet_id,
        instance_type=instance_type,
        root_device=shape.get("root_device"),
        architecture=shape.get("architecture") or "x86_64",
        ena_support=shape.get("ena_support"),
        boot_mode=shape.get("boot_mode"),
        instance_tags=shape.get("instance_tags") or {},
        volumes=volumes,
        checks=checks,
        source_reason=source_reason,
        copies_needed=copies_needed,
        **_worker_fields(
            restore_id, source, req, sum(v.size_gib for v in volumes), region, role_arn
        ),
    )


def _worker_fields(
    restore_id: str,
    source: str,
    req: RestoreInput,
    total_gib: int,
    region: str,
    role_arn: str | None,
) -> dict[str, Any]:
    """Backup and archive sources are written by a restore worker in the target, sized like
    a backup worker for the data (decompression and decryption want vCPUs). The heartbeat
    timeout (the workers' setting) also bounds how long a crashed orchestrator's delivery
    waits to be retried."""
    from ec2backup import config, workers

    if source == "snapshot":
        return {"heartbeat_timeout_seconds": workers.heartbeat_timeout()}
    return {
        # the restore worker runs in the target account; its secret stays in the backup account
        "secret_name": workers.session_secret_id(
            restore_id,
            region,
            aws.caller_account(region, role_arn),
            aws.caller_account(region),
        ),
        "worker_instance_type": workers.plan_instance_type(
            total_gib,
            req.worker_instance_type
            or config.load().worker_for(req.to_region or req.region).instance_types.get("restore"),
        ),
        "worker_subnet_id": req.worker_subnet_id or req.subnet_id,
        "heartbeat_timeout_seconds": workers.heartbeat_timeout(),
        "boot_timeout_seconds": workers.boot_timeout(),
        "checkpoint_mib": config.load().performance.restore_checkpoint_mib,
    }


def _target_zone(
    req: RestoreInput, region: str, role_arn: str | None, shape: dict[str, Any], checks: list[str]
) -> str:
    ec2 = aws.client("ec2", region, role_arn)
    if req.subnet_id:
        try:
            subnet = ec2.describe_subnets(SubnetIds=[req.subnet_id])["Subnets"][0]
        except Exception as exc:
            raise RestoreError(f"subnet {req.subnet_id} does not exist in {region}") from exc
        az = str(subnet["AvailabilityZone"])
        if req.availability_zone and req.availability_zone != az:
            raise RestoreError(f"subnet {req.subnet_id} is in {az}, not {req.availability_zone}")
        checks.append(f"subnet {req.subnet_id} in {az}")
        return az
    zones = [z["ZoneName"] for z in ec2.describe_availability_zones()["AvailabilityZones"]]
    if req.availability_zone:
        if req.availability_zone not in zones:
            raise RestoreError(f"availability zone {req.availability_zone} is not in {region}")
        return req.availability_zone
    original = shape.get("availability_zone")
    zone = str(original) if original in zones else str(zones[0])
    checks.append(f"availability zone {zone}")
    return zone


def _check_instance_type(
    region: str, role_arn: str | None, instance_type: str, checks: list[str]
) -> None:
    ec2 = aws.client("ec2", region, role_arn)
    try:
        ec2.describe_instance_types(InstanceTypes=[instance_type])
    except Exception as exc:
        raise RestoreError(f"instance type {instance_type} is not offered in {region}") from exc
    checks.append(f"instance type {instance_type} offered")

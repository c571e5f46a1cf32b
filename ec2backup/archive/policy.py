"""Archive planning, policy selection (newest restore point per instance not yet archived) and
archive retention (monthly/yearly counts, minimum storage duration)."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ec2backup.archive.copy import PRICE_PER_GB_MONTH, ArchiveError, find_archived, open_or_create
from ec2backup.models.archive import (
    ArchiveCandidate,
    ArchiveInput,
    ArchivePlan,
    ArchiveRetentionOutput,
)
from ec2backup.policy import Policy
from ec2backup.repository.backend import (
    MINIMUM_STORAGE_DAYS,
    S3Backend,
)
from ec2backup.repository.repo import Repository


# ---- retention ----------------------------------------------------------------------------------
@dataclass
class EarlyDeletion:
    packs: int = 0
    bytes: int = 0
    cost_usd: float = 0.0


def young_packs(archive: Repository, now: dt.datetime) -> dict[str, tuple[int, float]]:
    """Pack id -> (size, days left of the minimum storage duration) for packs still inside it."""
    backend = archive.backend
    storage_class = archive.config.data_storage_class or ""
    minimum = MINIMUM_STORAGE_DAYS.get(storage_class, 0)
    if not minimum or not isinstance(backend, S3Backend):
        return {}
    young: dict[str, tuple[int, float]] = {}
    # One listing (with each object's LastModified), not a HEAD per pack.
    for name, size, modified in backend.list_modified("data/"):
        age = (now - modified).total_seconds() / 86400
        if age < minimum:
            young[name.rsplit("/", 1)[1]] = (size, minimum - age)
    return young


def early_deletion_cost(
    young: dict[str, tuple[int, float]], packs: list[str], storage_class: str
) -> EarlyDeletion:
    out = EarlyDeletion()
    price = PRICE_PER_GB_MONTH.get(storage_class, 0.0)
    for pid in packs:
        if pid in young:
            size, days_left = young[pid]
            out.packs += 1
            out.bytes += size
            out.cost_usd += size / 1e9 * price * days_left / 30
    return out


# ---- control plane of an Archive workflow -------------------------------------------------------
def bucket_region(url: str) -> str:
    """The Region of an s3:// repository's bucket (where its archive worker runs)."""
    from urllib.parse import urlparse

    from ec2backup import aws

    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ArchiveError(f"--to: {url} is not an s3:// URL (archives live in S3 Glacier)")
    s3 = aws.client("s3", "us-east-1")
    try:
        location = s3.get_bucket_location(Bucket=parsed.netloc).get("LocationConstraint")
    except Exception as exc:
        if aws.error_code(exc) == "NoSuchBucket":
            raise ArchiveError(f"--to: bucket {parsed.netloc} does not exist") from exc
        raise
    return str(location or "us-east-1")


def plan(archive_id: str, req: ArchiveInput, password: str) -> ArchivePlan:
    """Resolve the restore point, open (or create) the archive, and plan the worker; an
    already archived restore point needs no worker."""
    from ec2backup import aws, catalog, config, installation, workers
    from ec2backup.models.session import ImagePlan

    region = bucket_region(req.archive_repository)
    source = req.source_repository
    if source is None:
        found = catalog.locate(
            req.restore_point_id,
            installation.installation_key(),
            password.encode(),
            source="backup",
        )
        source = str(found.repository)
    installation.remember_repository(req.archive_repository)
    hot = Repository.open(source, password.encode())
    rid, _rp = hot.load_restore_point(req.restore_point_id)
    arc = open_or_create(req.archive_repository, password.encode(), req.storage_class)
    storage_class = str(arc.config.data_storage_class)
    existing = find_archived(arc, hot.config.id, rid)
    if existing is not None:
        return ArchivePlan(
            restore_point_id=rid,
            source_repository=source,
            existing_archive_id=existing,
            storage_class=storage_class,
        )
    ec2 = aws.client("ec2", region)
    zones = ec2.describe_availability_zones()["AvailabilityZones"]
    worker = ImagePlan(
        repository=req.archive_repository,
        placement="backup",
        placement_reason="archive copies run in the backup account, in the archive's Region",
        worker_role_arn=None,
        snapshot_role_arn=None,
        region=region,
        availability_zone=zones[0]["ZoneName"] if zones else f"{region}a",
        instance_type=workers.plan_instance_type(
            0, config.load().worker_for(region).instance_types.get("archive")
        ),
        range_blocks=0,
        volumes=[],
        secret_name=workers.session_secret_name(archive_id),
        heartbeat_timeout_seconds=float(
            os.environ.get("EC2BACKUP_HEARTBEAT_TIMEOUT_SECONDS")
            or workers.DEFAULT_HEARTBEAT_TIMEOUT
        ),
        boot_timeout_seconds=float(
            os.environ.get("EC2BACKUP_AGENT_BOOT_TIMEOUT_SECONDS") or workers.DEFAULT_BOOT_TIMEOUT
        ),
    )
    workers.put_session_secret(archive_id, worker, password)
    return ArchivePlan(
        restore_point_id=rid, source_repository=source, storage_class=storage_class, worker=worker
    )


# ---- the archive part of a policy ---------------------------------------------------------------
def select(policy: Policy, password: str) -> tuple[list[ArchiveCandidate], list[str]]:
    """The newest restore point of each instance the policy backs up, unless it is archived."""
    from ec2backup.errors import NotFoundError

    assert policy.image_backup is not None and policy.archive is not None
    hot = Repository.open(policy.image_backup.repository, password.encode())
    newest: dict[str, tuple[str, Any]] = {}
    for rid, rp in hot.list_restore_points():
        if rp.tags.get("policy") != policy.name or rp.source.kind != "ec2-instance":
            continue
        instance = str(rp.source.instance_id)
        if instance not in newest or rp.time > newest[instance][1].time:
            newest[instance] = (rid, rp)
    notes: list[str] = []
    try:
        arc: Repository | None = Repository.open(policy.archive.repository, password.encode())
    except NotFoundError:
        arc = None  # created by the first Archive
    candidates = []
    for instance, (rid, rp) in sorted(newest.items()):
        if arc is not None and find_archived(arc, hot.config.id, rid) is not None:
            notes.append(f"{instance}: newest restore point {rid[:12]} is archived already")
            continue
        candidates.append(
            ArchiveCandidate(restore_point_id=rid, instance_id=instance, time=rp.time)
        )
    return candidates, notes


def unreferenced_packs(repo: Repository) -> list[str]:
    from ec2backup.repository.check import referenced

    repo.load_index(refresh=True)
    _rps, _pages, used = referenced(repo)
    used_packs = {loc.pack_id for b in used if (loc := repo.locate(b)) is not None}
    return sorted(p for p in repo.list_packs() if p not in used_packs)


def apply_retention(
    policy: Policy,
    now: dt.datetime,
    password: str,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _m: None,
) -> ArchiveRetentionOutput:
    """Archive retention: monthly/yearly counts per instance, then a prune that never repacks
    and (unless allowed) never deletes a pack inside its minimum storage duration."""
    from ec2backup.errors import NotFoundError
    from ec2backup.policy import GfsRetention
    from ec2backup.repository.prune import prune
    from ec2backup.retention import by_instance, keep_gfs

    assert policy.archive is not None
    out = ArchiveRetentionOutput(now=now, dry_run=dry_run)
    try:
        arc = Repository.open(policy.archive.repository, password.encode())
    except NotFoundError:
        out.notes.append(f"no archive repository at {policy.archive.repository} yet")
        return out
    rule = GfsRetention(
        daily=0, weekly=0, monthly=policy.archive.retention.monthly,
        yearly=policy.archive.retention.yearly,
    )  # fmt: skip
    points = [
        (rid, rp) for rid, rp in arc.list_restore_points() if rp.tags.get("policy") == policy.name
    ]
    for group in by_instance(points, lambda p: str(p[1].source.instance_id)).values():
        kept, expired = keep_gfs(group, lambda p: p[1].time, rule, policy.schedule.time_zone)
        out.kept_restore_points += [rid for rid, _ in kept]
        out.forgotten_restore_points += [rid for rid, _ in expired]
    if dry_run:
        return out
    if out.forgotten_restore_points:
        progress(f"forgetting {len(out.forgotten_restore_points)} archived restore points")
        with arc.lock(exclusive=False, purpose=f"archive retention {policy.name}", wait=60):
            for rid in out.forgotten_restore_points:
                arc.forget(rid)
    young = young_packs(arc, now)
    allow = policy.archive.allow_early_deletion
    with arc.lock(exclusive=True, purpose=f"archive prune {policy.name}", wait=600):
        dead = unreferenced_packs(arc)
        early = early_deletion_cost(young, dead, str(arc.config.data_storage_class))
        out.young_packs, out.young_bytes = early.packs, early.bytes
        out.early_deletion_cost_usd = round(early.cost_usd, 6)
        out.early_deleted = allow and early.packs > 0
        progress("pruning the archive")
        report = prune(
            arc,
            repack=False,
            may_delete=None if allow else (lambda pid: pid not in young),
            progress=lambda _n: progress("pruning the archive"),
            grace=dt.timedelta(hours=policy.archive.prune_grace_hours),
        )
    out.packs_deleted, out.bytes_freed = report.packs_deleted, report.bytes_freed
    out.packs_marked = report.packs_marked
    if early.packs and not allow:
        out.notes.append(
            f"{early.packs} unreferenced packs ({early.bytes} bytes) are inside the "
            f"{arc.config.data_storage_class} minimum storage duration: kept; deleting them now "
            f"would cost about ${early.cost_usd:.4f} (set archive.allow_early_deletion)"
        )
    return out

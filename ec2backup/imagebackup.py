"""Control-plane side of an image-level backup: plan it against the repository, and commit the
restore point once every volume's blocks are durable.

CBT base: the latest restore point of the same instance that holds this volume names the
snapshot it was read from. If that snapshot still exists (same lineage), the next session asks
EBS only for the blocks changed since; otherwise it reads every written block and relies on
dedup against the repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ec2backup import anomaly, aws, budget, config, readplan, workers
from ec2backup import ebs as ebs_api
from ec2backup.errors import UserError
from ec2backup.models.session import ImageBackupSpec, ImagePlan, Stream, VolumePlan
from ec2backup.models.snapshots import SnapshotSet
from ec2backup.repository import objectlock
from ec2backup.repository.backend import ObjectMissing
from ec2backup.repository.blockmap import ID_SIZE, PAGE_BLOCKS, is_blob
from ec2backup.repository.repo import Repository
from ec2backup.repository.restorepoint import (
    SUMMED_STATS,
    AnomalySignal,
    RestorePointSource,
    VolumeRecord,
    VolumeStats,
)
from ec2backup.repository.writer import BackupWriter, checkpoint_name, commit_restore_point

log = logging.getLogger("ec2backup.imagebackup")


def checkpoint_key(session_id: str, source_volume_id: str) -> str:
    """The repository checkpoint of one volume of one session: the durable cursor a retried,
    resumed or re-provisioned range continues from."""
    return f"session:{session_id}:{source_volume_id}"


class IncompleteBackup(UserError):
    """A commit that would name data that is not (all) there: never retried as is."""


SESSION_CHECKPOINT_PREFIX = "session:"


def checkpoint_owner(key: str) -> str | None:
    """The workflow id that wrote a checkpoint, from its key: `session:<session id>:<volume>`
    (backup sessions, above) or `<archive workflow id>/<volume index>` (archive copies)."""
    if key.startswith(SESSION_CHECKPOINT_PREFIX):
        owner = key[len(SESSION_CHECKPOINT_PREFIX) :].rsplit(":", 1)[0]  # ids may hold ':'
        return owner or None
    if "/" in key:
        return key.rsplit("/", 1)[0] or None
    return None


def checkpoint_owners(url: str, password: str | None) -> dict[str, str]:
    """Checkpoint object name -> the workflow id that wrote it, for every checkpoint in the
    repository (one that does not decrypt is left for `repo check` to report)."""
    from ec2backup.repository.writer import Checkpoint

    repo = Repository.open(url, None if password is None else password.encode())
    out: dict[str, str] = {}
    for name, _size in repo.backend.list("checkpoints/"):
        try:
            key = Checkpoint.model_validate_json(repo.load_named(name)).key
        except (UserError, ValueError):
            continue
        owner = checkpoint_owner(key)
        if owner is not None:
            out[name] = owner
    return out


def delete_checkpoints(url: str, password: str | None, names: list[str]) -> int:
    """Delete these checkpoints (of closed workflows) under a shared lock; how many were there."""
    repo = Repository.open(url, None if password is None else password.encode())
    with repo.lock(exclusive=False, purpose="janitor: checkpoints of closed workflows", wait=60):
        return _delete_present(repo, names)


def _delete_present(repo: Repository, names: list[str]) -> int:
    """Delete those of these objects that exist; how many did."""
    deleted = 0
    for name in names:
        if repo.backend.exists(name):
            repo.backend.delete(name)
            deleted += 1
    return deleted


def drop_checkpoints(url: str, session_id: str, volume_ids: list[str], password: str | None) -> int:
    """Delete a closed session's checkpoints (a committed session has none left: the commit
    removes them); returns how many there were. Idempotent."""
    repo = Repository.open(url, None if password is None else password.encode())
    names = [checkpoint_name(checkpoint_key(session_id, v)) for v in volume_ids]
    return _delete_present(repo, names)


def committed(repo: Repository, session_id: str) -> str | None:
    """The restore point this session already committed, if any."""
    for rid, rp in repo.list_restore_points():
        if rp.source.session_id == session_id:
            return rid
    return None


def verify_records(repo: Repository, records: list[VolumeRecord], session_id: str) -> None:
    """Every map page the records name exists, and every blob those pages name is indexed."""
    index = repo.load_index(refresh=True)
    for record in records:
        for page_id in {p for p in record.pages if p is not None}:
            try:
                page = repo.load_page(page_id)
            except ObjectMissing as exc:
                raise IncompleteBackup(
                    f"session {session_id}: map page {page_id[:12]} of {record.name} is missing: "
                    "not committing a restore point"
                ) from exc
            for slot in range(0, len(page), ID_SIZE):
                blob_id = bytes(page[slot : slot + ID_SIZE])
                if is_blob(blob_id) and blob_id not in index and repo.locate(blob_id) is None:
                    raise IncompleteBackup(
                        f"session {session_id}: blob {blob_id.hex()[:12]} of {record.name} is "
                        "not in the index: not committing a restore point"
                    )


def _latest_records(repo: Repository, instance_id: str) -> tuple[str | None, dict[Any, Any]]:
    """(restore point id, {source volume id: volume record}) of the instance's newest point."""
    candidates = [
        (rid, rp)
        for rid, rp in repo.list_restore_points()
        if rp.source.instance_id == instance_id and rp.source.kind == "ec2-instance"
    ]
    if not candidates:
        return None, {}
    rid, rp = max(candidates, key=lambda c: c[1].time)
    return rid, {v.metadata.source_volume_id: v for v in rp.volumes}


def _snapshot_usable(ec2: Any, snapshot_id: str) -> bool:
    try:
        snaps = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"]
    except Exception as exc:
        if aws.error_code(exc).startswith("InvalidSnapshot"):
            return False
        raise
    return bool(snaps) and snaps[0]["State"] == "completed"


class ObjectLockRequired(UserError):
    pass


def require_object_lock(repo: Repository, spec: ImageBackupSpec) -> None:
    """The policy's `image_backup.object_lock`: refuse (before any worker exists) to write
    backups that were meant to be immutable into a repository that is not (compliance
    satisfies a governance requirement, not the other way round)."""
    if spec.object_lock is None:
        return
    settings = repo.config.object_lock
    if settings is None or not objectlock.enabled(repo):
        raise ObjectLockRequired(
            f"repository {spec.repository}: the policy requires an Object Lock repository "
            f"({spec.object_lock}) and this one has no Object Lock (repo init --object-lock)"
        )
    if spec.object_lock == "compliance" and settings.mode != "COMPLIANCE":
        raise ObjectLockRequired(
            f"repository {spec.repository}: the policy requires Object Lock in compliance "
            f"mode and the repository locks in {settings.mode.lower()} mode"
        )


def blocks_to_read(ebs: Any, vp: VolumePlan, list_rps: dict[str, float] | None = None) -> int:
    """The blocks a session reads of this volume: what changed since its CBT base, else every
    written block (list calls only: 1 per 10,000 blocks, paced to the session's share of the
    list budget in `list_rps` when it has one)."""
    rps = (list_rps or {}).get(budget.list_api(vp.parent_snapshot_id))
    pace = budget.RateLimiter(rps).acquire if rps else ebs_api.no_pace
    if vp.parent_snapshot_id:
        listed = ebs_api.list_changed_blocks(ebs, vp.parent_snapshot_id, vp.snapshot_id, pace)
        return sum(1 for ref in listed if isinstance(ref, ebs_api.BlockRef))
    return sum(1 for _ in ebs_api.list_snapshot_blocks(ebs, vp.snapshot_id, pace))


def choose_reads(
    plan: ImagePlan,
    snapshot_set: SnapshotSet,
    spec: ImageBackupSpec,
    list_rps: dict[str, float] | None = None,
) -> None:
    """Each volume's read strategy (ec2backup.readplan), said in `read_reason`; a volume read
    directly gets no copies."""
    asked = spec.worker.read
    perf = config.load().performance
    plan.ebs_direct_rps = float(perf.ebs_direct_session_rps)
    ebs = None
    for vp in plan.volumes:
        member = next(m for m in snapshot_set.members if m.volume_id == vp.source_volume_id)
        if asked == "attached":
            vp.read, vp.read_reason = "attached", "attached as asked"
            continue
        other_account = plan.snapshot_role_arn is not None
        if other_account:  # never read directly: no need to count
            choice = readplan.choose(0, vp.copies, member.encrypted, perf, asked, True)
            vp.read, vp.read_reason = choice.read, choice.reason
            continue
        if ebs is None:
            ebs = aws.client("ebs", plan.region)
        vp.blocks_to_read = blocks_to_read(ebs, vp, list_rps)
        choice = readplan.choose(vp.blocks_to_read, vp.copies, member.encrypted, perf, asked)
        vp.read, vp.read_reason = choice.read, choice.reason
        if vp.read == "ebs-direct":
            vp.copies, vp.worker_devices, vp.streams = 0, [], 1


def prepare(
    session_id: str,
    snapshot_set: SnapshotSet,
    spec: ImageBackupSpec,
    password: str | None,
    list_rps: dict[str, float] | None = None,
) -> ImagePlan:
    backup_account = aws.caller_account(snapshot_set.region)
    plan = workers.build_plan(session_id, snapshot_set, spec, backup_account)
    repo = Repository.open(spec.repository, None if password is None else password.encode())
    require_object_lock(repo, spec)
    parent_id, records = _latest_records(repo, snapshot_set.instance_id)
    ec2 = aws.client("ec2", snapshot_set.region, snapshot_set.account_role_arn)
    for vp in plan.volumes:
        record = records.get(vp.source_volume_id)
        if record is None:
            vp.cbt_reason = (
                "first backup of this volume: reading its written blocks"
                if parent_id is None or not records
                else "volume not in the previous restore point: reading written blocks"
            )
            continue
        vp.parent_restore_point_id = parent_id
        base = record.metadata.snapshot_id
        if base and _snapshot_usable(ec2, base):
            vp.parent_snapshot_id = base
            vp.cbt_reason = f"changed blocks since {base}"
        else:
            vp.cbt_reason = (
                f"CBT base {base or '(none)'} is gone: reading every written "
                "block, dedup against the repository"
            )
    choose_reads(plan, snapshot_set, spec, list_rps)
    workers.share_snapshots(plan, snapshot_set, backup_account)
    workers.put_session_secret(session_id, plan, password)
    return plan


@dataclass
class Committed:
    restore_point_id: str
    anomaly: AnomalySignal | None  # the ransomware signal's verdict on it
    # The instance's newest clean restore point now (ec2backup.anomaly.last_clean).
    last_clean: str | None
    # What the restore point records of each volume it holds (source volume id -> stats):
    # counted by its writers and carried through their checkpoints, so a range attempt that
    # was lost after a checkpoint still counts, unlike the sum of the ranges that returned.
    volumes: dict[str, VolumeStats]


def _committed(repo: Repository, rp_id: str, instance_id: str) -> Committed:
    points = [
        (rid, rp)
        for rid, rp in repo.list_restore_points()
        if rp.source.kind == "ec2-instance" and rp.source.instance_id == instance_id
    ]
    mine = next((rp for rid, rp in points if rid == rp_id), None)
    return Committed(
        restore_point_id=rp_id,
        anomaly=mine.anomaly if mine is not None else None,
        last_clean=anomaly.last_clean(points),
        volumes={
            v.metadata.source_volume_id: v.stats
            for v in (mine.volumes if mine is not None else [])
            if v.metadata.source_volume_id
        },
    )


def merge_streams(parts: list[tuple[Stream, VolumeRecord, int]]) -> VolumeRecord:
    """One volume's record from its streams' (VolumePlan.spans): each stream's map pages
    within its span (spans are whole pages, so no page has two writers), the other counters
    summed; allocated blocks from where every stream started (the same base: the parent's
    count, or 0) plus what each changed."""
    if len(parts) == 1:
        return parts[0][1]
    first = parts[0][1]
    pages = list(first.pages)
    stats = first.stats.model_copy()
    base = parts[0][2]
    allocated = base
    for index, (s, record, start_allocated) in enumerate(parts):
        lo, hi = s.start // PAGE_BLOCKS, -(-s.end // PAGE_BLOCKS)
        pages[lo:hi] = record.pages[lo:hi]
        allocated += record.stats.blocks_allocated - start_allocated
        if index:
            for name in SUMMED_STATS:
                setattr(stats, name, getattr(stats, name) + getattr(record.stats, name))
            stats.seconds = max(stats.seconds, record.stats.seconds)
    stats.blocks_allocated = allocated
    return first.model_copy(update={"pages": pages, "stats": stats})


def commit(
    session_id: str,
    snapshot_set: SnapshotSet,
    plan: ImagePlan,
    policy_name: str,
    password: str | None,
) -> Committed:
    """Write the session's restore point; idempotent: a session commits one restore point, and a
    retry (after a lost reply) returns the one already written. Refuses (nothing written) unless
    every volume reached its end and every page and blob the restore point names is stored."""
    repo = Repository.open(plan.repository, None if password is None else password.encode())
    keys = [checkpoint_key(session_id, s.key) for vp in plan.volumes for s in vp.spans()]
    with repo.lock(exclusive=False, purpose=f"commit {session_id}", wait=300):
        done = committed(repo, session_id)
        if done is not None:
            return _committed(repo, done, snapshot_set.instance_id)
        records = []
        for vp in plan.volumes:
            parts = []
            for s in vp.spans():
                writer = BackupWriter.resume(repo, checkpoint_key(session_id, s.key))
                if writer.position < s.end:
                    writer.close()
                    what = (
                        f"blocks {s.start}-{s.end} ({s.key})"
                        if s.start or s.end < (vp.blocks_total)
                        else f"{vp.blocks_total} blocks"
                    )
                    raise IncompleteBackup(
                        f"session {session_id}: volume {vp.source_volume_id} has "
                        f"{writer.position - s.start} of {what} durable: not committing a "
                        "restore point"
                    )
                parts.append((s, writer.finish(), writer.allocated_base))
            record = merge_streams(parts)
            record.device = vp.device
            member = next(m for m in snapshot_set.members if m.volume_id == vp.source_volume_id)
            record.metadata = record.metadata.model_copy(
                update={
                    "size_gib": member.size_gib,
                    "volume_type": member.volume_type,
                    "iops": member.iops,
                    "throughput": member.throughput,
                    "encrypted": member.encrypted,
                }
            )
            records.append(record)
        parents = {vp.parent_restore_point_id for vp in plan.volumes} - {None}
        source = RestorePointSource(
            kind="ec2-instance",
            instance_id=snapshot_set.instance_id,
            region=snapshot_set.region,
            account=snapshot_set.account,
            availability_zone=snapshot_set.availability_zone,
            snapshot_set_id=snapshot_set.set_id,
            session_id=session_id,
            placement=plan.placement,
            instance_type=snapshot_set.instance_type,
            root_device=snapshot_set.root_device,
            architecture=snapshot_set.architecture,
            ena_support=snapshot_set.ena_support,
            boot_mode=snapshot_set.boot_mode,
            subnet_id=snapshot_set.subnet_id,
            instance_tags=snapshot_set.instance_tags,
        )
        verify_records(repo, records, session_id)
        earlier = [
            rp
            for _rid, rp in repo.list_restore_points()
            if rp.source.kind == "ec2-instance"
            and rp.source.instance_id == snapshot_set.instance_id
            and (snapshot_set.created is None or rp.time < snapshot_set.created)
        ]
        signal = anomaly.assess(records, earlier)
        if signal.verdict == "anomaly":
            log.warning(
                "session %s: ransomware signal on %s: %s",
                session_id,
                snapshot_set.instance_id,
                "; ".join(signal.reasons),
            )
        rp_id = commit_restore_point(
            repo,
            records,
            parent=next(iter(parents), None),
            source=source,
            tags={"policy": policy_name},
            checkpoint_keys=keys,
            when=snapshot_set.created,
            anomaly=signal,
            keep_days=plan.keep_days,
        )
        log.info("restore point %s written to %s", rp_id, plan.repository)
        return _committed(repo, rp_id, snapshot_set.instance_id)

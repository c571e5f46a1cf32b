"""Retention: what a policy's run deletes once its sessions are done.

Everything is found from the cloud and the repository, never from local state:

- **snapshot sets** of the policy (found by their authenticated tags, `snapshots.catalog`) in
  every Region and account of the selection, aged by the set's nominal time;
- **replica sets** in every replication target, under the target's own retention (default: the
  snapshot retention);
- **restore points** in the image-backup repository whose `policy` tag is the policy's name,
  kept by daily/weekly/monthly/yearly counts (restic's `forget --keep-*` rules, in the policy's
  time zone), then the repository is pruned.

What is never deleted, whatever its age:

- an instance's newest snapshot set, replica set and restore point (retention alone must never
  leave an instance with nothing; a terminated instance's last backup goes when an operator
  deletes it);
- a snapshot that is the **CBT base** of its volume: the snapshot named by the volume's record in
  the instance's newest restore point. The next image-level incremental asks EBS for the blocks
  changed since it; deleting it would turn that incremental into a full read;
- with `on_anomaly: lock-last-clean`, an instance's last clean restore point and the first
  anomaly after it while that anomaly is younger than `anomaly_hold_days` (ec2backup.reaction);
- anything whose tags do not authenticate (not ours to judge; `snapshots list` reports them).

Time is an input (`now`): the `BackupPolicy` workflow passes its deterministic `workflow.now()`,
`ec2backup policy retention --now` answers "what would go at that date" (simulated days).
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from ec2backup import aws, reaction, snapshots
from ec2backup.models.policy import RetentionOutput
from ec2backup.policy import GfsRetention, Policy, Retention
from ec2backup.repository.marks import marks_due
from ec2backup.snapshots import CatalogEntry, catalog

log = logging.getLogger("ec2backup.retention")

# Prune waits this long for other sessions' shared locks on the repository to go away.
PRUNE_LOCK_WAIT_SECONDS = 600.0

T = TypeVar("T")


# ---- pure selection rules -----------------------------------------------------------------------
def keep_by_age(
    items: Iterable[T], created: Callable[[T], dt.datetime], rule: Retention, now: dt.datetime
) -> tuple[list[T], list[T]]:
    """(kept, expired) of one instance's items under a count or days rule; newest always kept."""
    ordered = sorted(items, key=created, reverse=True)
    if rule.count is not None:
        kept, expired = ordered[: rule.count], ordered[rule.count :]
    else:
        assert rule.days is not None
        horizon = now - dt.timedelta(days=rule.days)
        kept = [i for i in ordered if created(i) >= horizon]
        expired = [i for i in ordered if created(i) < horizon]
    if ordered and ordered[0] not in kept:  # the newest stays
        kept.insert(0, ordered[0])
        expired.remove(ordered[0])
    return kept, expired


def _buckets(tz: zoneinfo.ZoneInfo) -> dict[str, Callable[[dt.datetime], Any]]:
    def local(t: dt.datetime) -> dt.datetime:
        return t.astimezone(tz)

    return {
        "daily": lambda t: local(t).date(),
        "weekly": lambda t: local(t).isocalendar()[:2],
        "monthly": lambda t: (local(t).year, local(t).month),
        "yearly": lambda t: local(t).year,
    }


def keep_gfs(
    items: Iterable[T], created: Callable[[T], dt.datetime], rule: GfsRetention, time_zone: str
) -> tuple[list[T], list[T]]:
    """(kept, expired): the newest item of each of the last N days/weeks/months/years."""
    ordered = sorted(items, key=created, reverse=True)
    keep: set[int] = {0} if ordered else set()  # the newest stays (it is the CBT parent)
    for kind, bucket_of in _buckets(zoneinfo.ZoneInfo(time_zone)).items():
        wanted = getattr(rule, kind)
        last: Any = object()
        for n, item in enumerate(ordered):
            if wanted == 0:
                break
            bucket = bucket_of(created(item))
            if bucket != last:
                keep.add(n)
                last = bucket
                wanted -= 1
    kept = [i for n, i in enumerate(ordered) if n in keep]
    expired = [i for n, i in enumerate(ordered) if n not in keep]
    return kept, expired


def by_instance(entries: Iterable[T], instance_of: Callable[[T], str]) -> dict[str, list[T]]:
    groups: dict[str, list[T]] = {}
    for e in entries:
        groups.setdefault(instance_of(e), []).append(e)
    return groups


# ---- applying them ------------------------------------------------------------------------------
def _delete_snapshot(ec2: Any, snapshot_id: str, notes: list[str]) -> bool:
    try:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    except Exception as exc:
        code = aws.error_code(exc)
        if code == "InvalidSnapshot.NotFound":
            return True  # a retried run already deleted it
        if code == "InvalidSnapshot.InUse":
            notes.append(f"{snapshot_id} is in use (an AMI or a copy): kept")
            return False
        raise
    log.info("snapshot %s deleted (retention)", snapshot_id)
    return True


def _sets(
    entries: list[CatalogEntry],
    rule: Retention,
    now: dt.datetime,
    protected: set[str],
) -> tuple[list[CatalogEntry], list[CatalogEntry], list[str]]:
    """(kept, expired, CBT bases that kept an otherwise expired set)."""
    kept: list[CatalogEntry] = []
    expired: list[CatalogEntry] = []
    bases: list[str] = []
    for group in by_instance(entries, lambda e: e.instance_id).values():
        k, x = keep_by_age(group, lambda e: e.created, rule, now)
        kept += k
        for entry in x:
            held = sorted(protected & {s.snapshot_id for s in entry.snapshots})
            if held:
                kept.append(entry)
                bases += held
            else:
                expired.append(entry)
    return kept, expired, bases


def _expire_sets(
    region: str,
    role_arn: str | None,
    entries: list[CatalogEntry],
    report: RetentionOutput,
    replica: bool,
) -> None:
    ec2 = aws.client("ec2", region, role_arn)
    locked = (
        snapshots.locked_snapshots(ec2, [s.snapshot_id for e in entries for s in e.snapshots])
        if entries
        else {}
    )
    for entry in entries:
        held = [locked[s.snapshot_id] for s in entry.snapshots if s.snapshot_id in locked]
        if held:
            # An EBS snapshot lock outlives the retention rule: keep the whole set (a set is
            # restorable only whole) and say until when.
            until = max(h["LockExpiresOn"] for h in held)
            modes = ", ".join(sorted({h["LockState"] for h in held}))
            report.locked_snapshot_sets[entry.set_id] = until
            (report.kept_replica_sets if replica else report.kept_snapshot_sets).append(
                entry.set_id
            )
            report.notes.append(
                f"snapshot set {entry.set_id} expired but is locked ({modes}) until "
                f"{until.isoformat()}: kept"
            )
            continue
        done = [
            s.snapshot_id
            for s in entry.snapshots
            if report.dry_run or _delete_snapshot(ec2, s.snapshot_id, report.notes)
        ]
        (report.deleted_replica_sets if replica else report.deleted_snapshot_sets).append(
            entry.set_id
        )
        (report.deleted_replicas if replica else report.deleted_snapshots).extend(done)


def cbt_bases(repo: Any) -> set[str]:
    """Snapshots named by the newest restore point of each instance: the next CBT bases."""
    newest: dict[str, Any] = {}
    for _rid, rp in repo.list_restore_points():
        if rp.source.kind != "ec2-instance":
            continue
        instance = rp.source.instance_id
        if instance not in newest or rp.time > newest[instance].time:
            newest[instance] = rp
    return {
        str(v.metadata.snapshot_id)
        for rp in newest.values()
        for v in rp.volumes
        if v.metadata.snapshot_id
    }


def apply(
    policy: Policy,
    now: dt.datetime,
    installation_key: bytes,
    password: str | None,
    dry_run: bool = False,
    progress: Callable[[str], None] = lambda _msg: None,
) -> RetentionOutput:
    """Apply the policy's retention as of `now` (idempotent: a rerun finds less to do)."""
    report = RetentionOutput(policy=policy.name, now=now, dry_run=dry_run)
    repo = None
    protected: set[str] = set()
    if policy.image_backup is not None:
        from ec2backup.repository.repo import Repository

        # Opened first: if the repository is unreadable, nothing is deleted (the CBT bases are
        # only known from it). No password: a KMS repository, opened by its KMS key file.
        repo = Repository.open(
            policy.image_backup.repository, None if password is None else password.encode()
        )
        protected = cbt_bases(repo)

    sources = [(r, a) for r in policy.selection.regions for a in policy.selection.accounts]
    for region, role in sources:
        progress(f"snapshot retention in {region}")
        entries, _problems = catalog(region, role, installation_key)
        ours = [e for e in entries if e.policy == policy.name and not e.replica]
        kept, expired, bases = _sets(ours, policy.snapshots.retention, now, protected)
        report.kept_snapshot_sets += [e.set_id for e in kept]
        report.cbt_bases += bases
        _expire_sets(region, role, expired, report, replica=False)

    for target in policy.replication.targets if policy.replication else []:
        progress(f"replica retention in {target.region}")
        rule = target.retention or policy.snapshots.retention
        entries, _problems = catalog(target.region, target.account_role_arn, installation_key)
        ours = [e for e in entries if e.policy == policy.name and e.replica]
        kept, expired, _ = _sets(ours, rule, now, set())
        report.kept_replica_sets += [e.set_id for e in kept]
        _expire_sets(target.region, target.account_role_arn, expired, report, replica=True)

    if repo is not None and policy.image_backup is not None:
        _restore_points(repo, policy, report, progress)
    return report


def _restore_points(
    repo: Any, policy: Policy, report: RetentionOutput, progress: Callable[[str], None]
) -> None:
    assert policy.image_backup is not None
    points = [
        (rid, rp)
        for rid, rp in repo.list_restore_points()
        if rp.tags.get("policy") == policy.name and rp.source.kind == "ec2-instance"
    ]
    forget: list[str] = []
    for group in by_instance(points, lambda p: str(p[1].source.instance_id)).values():
        kept, expired = keep_gfs(
            group, lambda p: p[1].time, policy.image_backup.retention, policy.schedule.time_zone
        )
        held = (
            reaction.held_until(group, policy.anomaly_hold_days)
            if "lock-last-clean" in policy.on_anomaly
            else None
        )
        if held is not None and held.until > report.now:
            for rid in (held.last_clean, held.first_anomaly):
                report.held_restore_points[rid] = held.until
                if any(r == rid for r, _ in expired):
                    expired = [p for p in expired if p[0] != rid]
                    kept.append((rid, dict(group)[rid]))
                    what = "last clean point before" if rid == held.last_clean else "first"
                    report.notes.append(
                        f"restore point {rid} expired but is the {what} anomaly of its "
                        f"instance (on_anomaly: lock-last-clean): kept until "
                        f"{held.until.isoformat()}"
                    )
        report.kept_restore_points += [rid for rid, _ in kept]
        forget += [rid for rid, _ in expired]
    report.forgotten_restore_points = forget
    if report.dry_run:
        return
    grace = dt.timedelta(hours=policy.image_backup.prune_grace_hours)
    if forget:
        progress(f"forgetting {len(forget)} restore points")
        with repo.lock(exclusive=False, purpose=f"retention {policy.name}", wait=60):
            for rid in forget:
                repo.forget(rid)
    elif not marks_due(repo, grace):
        return  # nothing forgotten now, nothing an earlier prune marked is due: no prune
    from ec2backup.repository.prune import prune

    progress("pruning the repository")
    with repo.lock(exclusive=True, purpose=f"prune {policy.name}", wait=PRUNE_LOCK_WAIT_SECONDS):
        pruned = prune(repo, progress=lambda _n: progress("pruning"), grace=grace)
    report.pruned_bytes = pruned.bytes_freed
    report.prune_marked_bytes = pruned.bytes_marked

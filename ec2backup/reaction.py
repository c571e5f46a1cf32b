"""What a policy does when the ransomware signal flags a session (`on_anomaly`).

`lock-last-clean` protects the instance's newest clean restore point (ec2backup.anomaly: the
newest before its first anomaly), which is what an operator restores after an attack:

- **retention** keeps it, and the first flagged point after it, past their rule for
  `anomaly_hold_days` after that anomaly (computed from the restore points themselves,
  `held_until`: no state to lose; the flagged point is the record of the anomaly, without it
  the next run would take a later, attacked point for the last clean one);
- on an **Object Lock repository** every object it needs is locked at least that long (the
  lock is only ever extended, ec2backup.repository.objectlock);
- its **snapshot set**, where it still exists, gets an EBS snapshot lock for the same time
  (the policy's `snapshots.lock` mode, else governance), and snapshot retention keeps locked
  sets already.

`notify` publishes one SNS message per flagged instance (policy `notify.sns_topic_arn`) with
the reasons, the flagged and the last clean restore point, and what was locked.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ec2backup import anomaly, aws, snapshots
from ec2backup.models.policy import (
    InstanceOutcome,
    LockLastCleanOutput,
)
from ec2backup.models.snapshots import SnapshotLockSpec
from ec2backup.policy import Policy
from ec2backup.repository import objectlock
from ec2backup.repository.repo import Repository
from ec2backup.repository.restorepoint import RestorePoint

log = logging.getLogger("ec2backup.reaction")

# SNS limits a subject to 100 characters (Publish, "Subject").
SUBJECT_MAX = 100


def _flagged(rp: RestorePoint) -> bool:
    return rp.anomaly is not None and rp.anomaly.flagged


@dataclass
class Hold:
    last_clean: str  # the instance's last clean restore point
    first_anomaly: str  # the flagged point that follows it
    until: dt.datetime  # the anomaly's time + anomaly_hold_days


def held_until(points: Sequence[tuple[str, RestorePoint]], hold_days: int) -> Hold | None:
    """For one instance's restore points: what lock-last-clean holds and until when, or None
    when no anomaly follows a clean point."""
    ordered = sorted(points, key=lambda p: p[1].time)
    clean = anomaly.last_clean(ordered)
    if clean is None:
        return None
    first = next(((rid, rp) for rid, rp in ordered if _flagged(rp)), None)
    if first is None:
        return None
    return Hold(clean, first[0], first[1].time + dt.timedelta(days=hold_days))


def _lock_snapshot_set(
    rp: RestorePoint,
    role_arn: str | None,
    until: dt.datetime,
    now: dt.datetime,
    lock: SnapshotLockSpec | None,
    out: LockLastCleanOutput,
) -> None:
    ids = [str(v.metadata.snapshot_id) for v in rp.volumes if v.metadata.snapshot_id]
    region = rp.source.region
    if not ids or region is None:
        return
    ec2 = aws.client("ec2", region, role_arn)
    present = []
    for snapshot_id in ids:
        try:
            ec2.describe_snapshots(SnapshotIds=[snapshot_id])
            present.append(snapshot_id)
        except ClientError as exc:
            if not aws.error_code(exc).startswith("InvalidSnapshot"):
                raise
    if not present:
        out.notes.append(
            f"restore point {out.restore_point_id}: its snapshot set is gone (snapshot "
            "retention): only the repository holds it"
        )
        return
    current = snapshots.locked_snapshots(ec2, present)
    todo = [s for s in present if s not in current or current[s]["LockExpiresOn"] < until]
    if todo:
        # Whole days, rounded up: LockDuration is in days.
        days = max(1, -(-int((until - now).total_seconds()) // 86_400))
        mode = lock.mode if lock is not None else "governance"
        snapshots.lock_snapshots(region, role_arn, todo, SnapshotLockSpec(mode=mode, days=days))
    out.snapshots_locked = todo
    if len(present) < len(ids):
        out.notes.append(
            f"restore point {out.restore_point_id}: {len(ids) - len(present)} of its "
            f"{len(ids)} snapshots are gone"
        )


def lock_last_clean(
    policy: Policy, instance: InstanceOutcome, now: dt.datetime, password: str | None
) -> LockLastCleanOutput:
    """Protect the flagged instance's last clean restore point (idempotent: locks only
    extend)."""
    assert policy.image_backup is not None
    out = LockLastCleanOutput()
    repo = Repository.open(
        policy.image_backup.repository, None if password is None else password.encode()
    )
    points = [
        (rid, rp)
        for rid, rp in repo.list_restore_points()
        if rp.source.kind == "ec2-instance" and rp.source.instance_id == instance.instance_id
    ]
    held = held_until(points, policy.anomaly_hold_days)
    if held is None:
        out.notes.append(
            f"instance {instance.instance_id}: no clean restore point before its first anomaly "
            "(nothing to lock)"
        )
        return out
    rp_id = held.last_clean
    # The objects and snapshots stay locked at least as long as retention holds the point.
    # Whole seconds: EBS reports a lock's end in seconds from when it was set (after `now`).
    until = max(held.until, now + dt.timedelta(days=policy.anomaly_hold_days)).replace(
        microsecond=0
    )
    rp = dict(points)[rp_id]
    out.restore_point_id, out.until = rp_id, until
    if objectlock.enabled(repo):
        report = objectlock.extend(repo, objectlock.needed_objects(repo, rp_id, rp), until)
        out.objects_locked = report.extended
    _lock_snapshot_set(rp, instance.account_role_arn, until, now, policy.snapshots.lock, out)
    log.info(
        "instance %s: last clean restore point %s held until %s (%d objects, %d snapshots "
        "locked now)",
        instance.instance_id,
        rp_id,
        until.isoformat(),
        out.objects_locked,
        len(out.snapshots_locked),
    )
    return out


def anomaly_message(
    policy: str, run_id: str, instance: InstanceOutcome, held: LockLastCleanOutput | None
) -> tuple[str, dict[str, Any]]:
    """(subject, body) of the SNS message for one flagged instance."""
    subject = f"ec2backup policy {policy}: ransomware signal on {instance.instance_id}"
    body: dict[str, Any] = {
        "policy": policy,
        "run_id": run_id,
        "event": "anomaly",
        "instance_id": instance.instance_id,
        "region": instance.region,
        "account_id": aws.account_of_role(instance.account_role_arn)
        if instance.account_role_arn
        else None,
        "restore_point_id": instance.restore_point_id,
        "reasons": list(instance.anomaly_reasons),
        "last_clean_restore_point_id": instance.last_clean_restore_point_id,
    }
    if held is not None:
        body["held"] = held.model_dump(mode="json")
    return subject[:SUBJECT_MAX], body


def publish_anomaly(
    topic_arn: str,
    policy: str,
    run_id: str,
    instance: InstanceOutcome,
    held: LockLastCleanOutput | None,
) -> str:
    subject, body = anomaly_message(policy, run_id, instance, held)
    sent = aws.client("sns", topic_arn.split(":")[3]).publish(
        TopicArn=topic_arn,
        Subject=subject,
        Message=json.dumps(body, indent=2),
        MessageAttributes={
            "policy": {"DataType": "String", "StringValue": policy},
            "outcome": {"DataType": "String", "StringValue": "anomaly"},
        },
    )
    return str(sent["MessageId"])

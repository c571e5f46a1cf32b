"""Retention over simulated days (issue 5): sessions carry explicit nominal times (`as_of`), and
retention runs with an explicit `now`; no sleeps, no clock games.

One instance, policy: snapshots kept 3 days, replicas (eu-west-1) kept by count 2, restore
points kept daily=2 weekly=2. Day 0 is an image-level backup, days 1..6 snapshot-only, days
7..10 image-level again. Retention at day 6 must keep day 0's snapshots (the CBT base of the
next incremental) although they expired; day 7's incremental must then use CBT against them.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from session_helpers import Workbench

from ec2backup.models.session import (
    BackupSessionInput,
    BackupSessionOutput,
    ImageBackupSpec,
    ReplicationSpec,
)

DAY0 = dt.datetime(2026, 1, 1, 2, 0, tzinfo=dt.UTC)  # a Thursday: days 0..3 are ISO week 1
REPLICA_REGION = "eu-west-1"

POLICY = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [us-east-1]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{days: 3}}
replication:
  targets:
    - region: {replica_region}
      retention: {{count: 2}}
image_backup:
  repository: {repo}
  retention: {{daily: 2, weekly: 2, monthly: 0, yearly: 0}}
"""


def day(n: int) -> dt.datetime:
    return DAY0 + dt.timedelta(days=n)


def _session(wb: Workbench, name: str, instance: str, n: int, repo: str | None) -> dict[str, Any]:
    """One BackupSession as of day n (started like a policy run would, with a nominal time)."""
    req = BackupSessionInput(
        instance_id=instance,
        region="us-east-1",
        replication=ReplicationSpec(region=REPLICA_REGION),
        image_backup=ImageBackupSpec(repository=repo) if repo else None,
        policy_name=name,
        as_of=day(n),
    )
    out: BackupSessionOutput = wb.run_session(req)
    return dict(out.model_dump())


def _retention(wb: Workbench, policy: Path, now: dt.datetime, *extra: str) -> dict[str, Any]:
    out = wb.cli("policy", "retention", str(policy), "--now", now.isoformat(), "--json", *extra)
    return dict(json.loads(out.stdout))


def _existing(wb: Workbench, region: str, snapshot_ids: list[str]) -> set[str]:
    ec2 = wb.client("ec2", region)
    found: set[str] = set()
    for sid in snapshot_ids:
        snaps = ec2.describe_snapshots(
            Filters=[{"Name": "snapshot-id", "Values": [sid]}], OwnerIds=["self"]
        )["Snapshots"]
        found |= {s["SnapshotId"] for s in snaps}
    return found


def test_retention_over_simulated_days(wb: Workbench, tmp_path: Path) -> None:
    name = f"ret-{uuid.uuid4().hex[:6]}"
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05")
    instance, volume = inst["instance_id"], inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()
    policy = tmp_path / "retention.yaml"
    policy.write_text(
        POLICY.format(name=name, instance=instance, repo=repo, replica_region=REPLICA_REGION)
    )

    sessions: dict[int, dict[str, Any]] = {}
    sessions[0] = _session(wb, name, instance, 0, repo)
    for n in range(1, 7):
        wb.cli("lab", "churn", volume, "--fraction", "0.01", "--seed", str(n))
        sessions[n] = _session(wb, name, instance, n, None)
    snaps = {n: s["snapshot_ids"] for n, s in sessions.items()}
    replicas = {n: s["replica_ids"] for n, s in sessions.items()}
    sets = {n: s["snapshot_set_id"] for n, s in sessions.items()}

    # A dry run as of day 6 (+1 h) reports and deletes nothing.
    now = day(6) + dt.timedelta(hours=1)
    dry = _retention(wb, policy, now, "--dry-run")
    assert dry["dry_run"] is True
    assert sorted(dry["deleted_snapshot_sets"]) == sorted(sets[n] for n in (1, 2, 3))
    assert _existing(wb, "us-east-1", snaps[1]) == set(snaps[1])

    # Day 6: snapshots older than 3 days go (days 1..3), but day 0 holds the CBT base.
    report = _retention(wb, policy, now)
    assert sorted(report["deleted_snapshot_sets"]) == sorted(sets[n] for n in (1, 2, 3))
    assert sorted(report["cbt_bases"]) == sorted(snaps[0])
    assert sorted(report["kept_snapshot_sets"]) == sorted(sets[n] for n in (0, 4, 5, 6))
    # Replicas: the newest 2 (days 5, 6) stay.
    assert sorted(report["deleted_replicas"]) == sorted(r for n in range(5) for r in replicas[n])
    assert report["forgotten_restore_points"] == []  # day 0's is the only one
    all_snaps = [s for n in range(7) for s in snaps[n]]
    assert _existing(wb, "us-east-1", all_snaps) == {s for n in (0, 4, 5, 6) for s in snaps[n]}
    all_replicas = [r for n in range(7) for r in replicas[n]]
    assert _existing(wb, REPLICA_REGION, all_replicas) == {r for n in (5, 6) for r in replicas[n]}
    # A second run is a no-op.
    again = _retention(wb, policy, now)
    assert again["deleted_snapshots"] == [] and again["deleted_replicas"] == []

    # Day 7: the incremental still uses CBT against day 0's snapshot.
    wb.cli("lab", "churn", volume, "--fraction", "0.01", "--seed", "7")
    sessions[7] = _session(wb, name, instance, 7, repo)
    for vol in sessions[7]["volumes"]:
        assert vol["cbt_used"] is True, vol
        assert any(s in vol["cbt_reason"] for s in snaps[0]), vol
    for n in (8, 9):
        wb.cli("lab", "churn", volume, "--fraction", "0.01", "--seed", str(n))
        sessions[n] = _session(wb, name, instance, n, repo)
    for n in (7, 8, 9):
        snaps[n], replicas[n] = sessions[n]["snapshot_ids"], sessions[n]["replica_ids"]
        sets[n] = sessions[n]["snapshot_set_id"]
    rps = {n: sessions[n]["restore_point_id"] for n in (0, 7, 8, 9)}

    # Day 9: day 0's snapshots are no longer a CBT base (day 9's restore point is newest).
    # Restore points: daily=2 keeps days 9 and 8; weekly=2 keeps day 9 (week 2) and day 0
    # (week 1): day 7 is forgotten and the repository pruned.
    report = _retention(wb, policy, day(9) + dt.timedelta(hours=1))
    assert sorted(report["deleted_snapshot_sets"]) == sorted(sets[n] for n in (0, 4, 5, 6))
    assert report["cbt_bases"] == []
    assert sorted(report["deleted_replicas"]) == sorted(r for n in (5, 6, 7) for r in replicas[n])
    assert report["forgotten_restore_points"] == [rps[7]]
    assert sorted(report["kept_restore_points"]) == sorted(rps[n] for n in (0, 8, 9))
    all_snaps = [s for n in range(10) for s in snaps[n]]
    assert _existing(wb, "us-east-1", all_snaps) == {s for n in (7, 8, 9) for s in snaps[n]}
    listed = wb.cli_json("repo", "ls", "--repo", repo, "--json")
    assert sorted(r["id"] for r in listed) == sorted(rps[n] for n in (0, 8, 9))
    wb.cli("repo", "check", "--repo", repo, "--read-data")

    # Day 9's restore point (sharing data with the forgotten one) still restores exactly.
    ec2 = wb.client("ec2")
    snap9 = next(
        s["SnapshotId"]
        for s in ec2.describe_snapshots(SnapshotIds=snaps[9])["Snapshots"]
        if s["VolumeId"] == volume
    )
    wb.assert_restores(repo, rps[9], volume, snap9, tmp_path / "day9.img")

    # Day 10: the next incremental uses CBT against day 9's snapshot.
    wb.cli("lab", "churn", volume, "--fraction", "0.01", "--seed", "10")
    sessions[10] = _session(wb, name, instance, 10, repo)
    for vol in sessions[10]["volumes"]:
        assert vol["cbt_used"] is True, vol
        assert any(s in vol["cbt_reason"] for s in snaps[9]), vol

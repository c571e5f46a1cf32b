"""EBS snapshot locks in the lab behave as on AWS (ec2backup_lab/snapshotlocks.py, docs/lab.md):
moto has no LockSnapshot at all, and deleted a locked snapshot like any other."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import client, error_of, seed_volume, snapshot

HOUR = 3600


def set_lock_clock(lab: Any, offset: float) -> None:
    req = urllib.request.Request(
        f"{lab.aws_url}/_lab/config",
        data=json.dumps({"lock_clock_offset_seconds": offset}).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        assert json.load(r)["lock_clock_offset_seconds"] == offset


@pytest.fixture
def ec2(lab: Any) -> Iterator[Any]:
    yield client(lab, "ec2")
    set_lock_clock(lab, 0.0)


def code_of(call: Any) -> str:
    with pytest.raises(ClientError) as exc:
        call()
    return error_of(exc.value)[0]


def test_governance_lock_blocks_delete_until_unlocked(lab: Any, ec2: Any) -> None:
    snap = snapshot(ec2, seed_volume(lab))
    out = ec2.lock_snapshot(SnapshotId=snap, LockMode="governance", LockDuration=1)
    assert out["LockState"] == "governance" and out["LockDuration"] == 1
    assert out["LockExpiresOn"] - out["LockCreatedOn"] == timedelta(days=1)
    assert code_of(lambda: ec2.delete_snapshot(SnapshotId=snap)) == "SnapshotLocked"
    listed = ec2.describe_locked_snapshots(SnapshotIds=[snap])["Snapshots"]
    assert [(s["SnapshotId"], s["LockState"]) for s in listed] == [(snap, "governance")]
    # governance: shortened, changed, or removed at any time
    ec2.lock_snapshot(
        SnapshotId=snap,
        LockMode="governance",
        ExpirationDate=datetime.now(UTC) + timedelta(hours=2),
    )
    ec2.unlock_snapshot(SnapshotId=snap)
    assert ec2.describe_locked_snapshots(SnapshotIds=[snap])["Snapshots"] == []
    ec2.delete_snapshot(SnapshotId=snap)


def test_compliance_lock_after_cooling_off_only_extends(lab: Any, ec2: Any) -> None:
    snap = snapshot(ec2, seed_volume(lab))
    out = ec2.lock_snapshot(SnapshotId=snap, LockMode="compliance", CoolOffPeriod=1, LockDuration=2)
    assert out["LockState"] == "compliance-cooloff" and out["CoolOffPeriod"] == 1
    # during the cooling-off period it may still be shortened
    ec2.lock_snapshot(SnapshotId=snap, LockMode="compliance", CoolOffPeriod=1, LockDuration=1)
    set_lock_clock(lab, 2 * HOUR)  # the cooling-off period is over
    state = ec2.describe_locked_snapshots(SnapshotIds=[snap])["Snapshots"][0]["LockState"]
    assert state == "compliance"
    assert code_of(lambda: ec2.unlock_snapshot(SnapshotId=snap)) == "OperationNotPermitted"
    assert (
        code_of(lambda: ec2.lock_snapshot(SnapshotId=snap, LockMode="governance", LockDuration=3))
        == "OperationNotPermitted"
    )
    shorter = datetime.now(UTC) + timedelta(hours=5)
    assert (
        code_of(
            lambda: ec2.lock_snapshot(
                SnapshotId=snap, LockMode="compliance", ExpirationDate=shorter
            )
        )
        == "OperationNotPermitted"
    )
    assert code_of(lambda: ec2.delete_snapshot(SnapshotId=snap)) == "SnapshotLocked"
    longer = ec2.lock_snapshot(SnapshotId=snap, LockMode="compliance", LockDuration=3)
    assert longer["LockState"] == "compliance"
    # once the lock has run out the snapshot is deletable, and still listed as expired
    set_lock_clock(lab, 4 * 24 * HOUR)
    expired = ec2.describe_locked_snapshots(Filters=[{"Name": "lock-state", "Values": ["expired"]}])
    assert snap in [s["SnapshotId"] for s in expired["Snapshots"]]
    ec2.delete_snapshot(SnapshotId=snap)


def test_invalid_lock_requests_are_refused(lab: Any, ec2: Any) -> None:
    snap = snapshot(ec2, seed_volume(lab))
    assert (
        code_of(
            lambda: ec2.lock_snapshot(
                SnapshotId=snap, LockMode="governance", CoolOffPeriod=1, LockDuration=1
            )
        )
        == "InvalidParameterCombination"
    )
    assert (
        code_of(lambda: ec2.lock_snapshot(SnapshotId=snap, LockMode="governance"))
        == "InvalidParameterCombination"
    )
    assert (
        code_of(
            lambda: ec2.lock_snapshot(
                SnapshotId="snap-0000000000000000f", LockMode="governance", LockDuration=1
            )
        )
        == "InvalidSnapshot.NotFound"
    )
    assert code_of(lambda: ec2.unlock_snapshot(SnapshotId=snap)) == "InvalidParameterValue"

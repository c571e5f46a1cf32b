"""A policy with `snapshots.lock` locks each snapshot of its sets (EBS snapshot locks);
retention leaves an expired set whose lock still holds, says why and until when, and deletes
it once the lock has run out; nobody can delete a locked snapshot meanwhile (issue 17)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from botocore.exceptions import ClientError
from session_helpers import Workbench

POLICY = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [us-east-1]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{count: 1}}
  lock: {{mode: governance, days: 2}}
"""
DAY = 86_400


def test_locked_sets_outlive_their_retention_until_the_lock_ends(
    wb: Workbench, tmp_path: Path
) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")
    name = f"locks-{uuid.uuid4().hex[:6]}"
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.format(name=name, instance=inst["instance_id"]))
    wb.cli("policy", "apply", str(policy))
    ec2 = wb.client("ec2")
    try:
        first = wb.policy_run(name)
        first_set = first["instances"][0]["snapshot_set_id"]
        sets = {
            rp["set_id"]: [s["snapshot_id"] for s in rp["snapshots"]]
            for rp in wb.cli_json("snapshots", "list", "--instance", inst["instance_id"], "--json")[
                "restore_points"
            ]
        }
        first_snaps = sets[first_set]
        locks = ec2.describe_locked_snapshots(SnapshotIds=first_snaps)["Snapshots"]
        assert sorted(x["SnapshotId"] for x in locks) == sorted(first_snaps)
        assert {(x["LockState"], x["LockDuration"]) for x in locks} == {("governance", 2)}

        # The second run's retention: the first set is past its rule (count 1) but locked.
        second = wb.policy_run(name)
        retention = second["retention"]
        assert first_set in retention["locked_snapshot_sets"], retention
        assert first_set not in retention["deleted_snapshot_sets"]
        assert any(first_set in note and "locked" in note for note in retention["notes"])
        try:
            ec2.delete_snapshot(SnapshotId=first_snaps[0])
            raise AssertionError("a locked snapshot was deleted")
        except ClientError as exc:
            assert exc.response["Error"]["Code"] == "SnapshotLocked"

        # Once the locks have run out, retention deletes the set.
        wb.lab_call("POST", "config", {"lock_clock_offset_seconds": 3 * DAY})
        out = json.loads(wb.cli("policy", "retention", name, "--json").stdout)
        assert first_set in out["deleted_snapshot_sets"], out
        assert sorted(out["deleted_snapshots"]) == sorted(first_snaps)
    finally:
        wb.lab_call("POST", "config", {"lock_clock_offset_seconds": 0})
        wb.cli("policy", "delete", name, check=False)

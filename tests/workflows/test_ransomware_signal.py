"""The ransomware signal (issue 17), through a policy's nightly runs.

After `lab encrypt-attack --fraction 0.2` the next session's restore point is flagged with a
reason; after an ordinary `lab churn --fraction 0.05` it is not; `restore instance --last-clean
INSTANCE_ID` restores the point before the attack, byte-exact, although a later, unflagged
point exists. The policy reacts (`on_anomaly: [notify, lock-last-clean]`): one SNS message
naming the flagged and the last clean point, the last clean point's snapshot set locked (so
snapshot retention keeps it), and repository retention keeping that point and the flagged one
past their rule until the hold ends (a dry run past it would forget them). An operator who
resolves the anomaly (`restore-points resolve`) makes the newest point the last clean one.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from session_helpers import REGION, Workbench, sns_messages, subscribed_queue

# A nightly policy whose rules alone would keep one snapshot set and one restore point a day.
POLICY = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [{region}]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{count: 1}}
image_backup:
  repository: {repo}
  retention: {{daily: 1, weekly: 0, monthly: 0}}
notify:
  sns_topic_arn: {topic}
  on: [failed]
on_anomaly: [notify, lock-last-clean]
anomaly_hold_days: 30
"""


def _points(wb: Workbench, instance_id: str) -> dict[str, dict[str, Any]]:
    listing = wb.cli_json("restore-points", "list", "--instance", instance_id, "--json")
    return {rp["id"]: rp for rp in listing["restore_points"] if rp["kind"] == "backup"}


def test_an_attack_is_flagged_the_policy_reacts_and_the_last_clean_point_restores(
    wb: Workbench, tmp_path: Path
) -> None:
    name = f"ransom-{uuid.uuid4().hex[:6]}"
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.3", "--seed", "41")
    instance_id, volume_id = inst["instance_id"], inst["volumes"][0]["volume_id"]
    topic, queue_url = subscribed_queue(wb, f"{name}-events")
    path = tmp_path / "policy.yaml"
    path.write_text(
        POLICY.format(
            name=name, instance=instance_id, region=REGION, repo=wb.new_repo(), topic=topic
        )
    )
    wb.cli("policy", "apply", str(path))

    first = wb.policy_run(name)["instances"][0]
    assert first["anomaly"] == "no-baseline"
    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "2")
    ordinary = wb.policy_run(name)["instances"][0]
    assert ordinary["anomaly"] == "clean", ordinary
    clean_content = wb.checksum(volume_id)  # what the point before the attack holds
    attack = json.loads(
        wb.cli("lab", "encrypt-attack", volume_id, "--fraction", "0.2", "--seed", "3").stdout
    )
    assert attack["bytes"] > 0
    attacked_run = wb.policy_run(name)
    attacked = attacked_run["instances"][0]
    assert attacked["anomaly"] == "anomaly", attacked
    (reason,) = attacked["anomaly_reasons"]
    assert volume_id in reason and "incompressible" in reason
    assert attacked["last_clean_restore_point_id"] == ordinary["restore_point_id"]
    assert any("ransomware signal on " + instance_id in n for n in attacked_run["notes"])

    # notify: one message for the flagged instance (the run itself succeeded: `on: [failed]`).
    (envelope,) = sns_messages(wb, queue_url)
    assert envelope["Subject"] == f"ec2backup policy {name}: ransomware signal on {instance_id}"
    event = json.loads(envelope["Message"])
    assert event["restore_point_id"] == attacked["restore_point_id"]
    assert event["last_clean_restore_point_id"] == ordinary["restore_point_id"]
    assert event["reasons"] == [reason]
    held = event["held"]
    assert held["restore_point_id"] == ordinary["restore_point_id"]

    # lock-last-clean: the clean point's snapshot set is locked and snapshot retention
    # (count 1, which would delete it) keeps it and says until when.
    ec2 = wb.client("ec2")
    locks = ec2.describe_locked_snapshots(SnapshotIds=held["snapshots_locked"])["Snapshots"]
    assert held["snapshots_locked"] and {s["LockState"] for s in locks} == {"governance"}
    until = dt.datetime.fromisoformat(held["until"])
    assert min(s["LockExpiresOn"] for s in locks) >= until
    retention = attacked_run["retention"]
    assert ordinary["snapshot_set_id"] in retention["locked_snapshot_sets"], retention
    assert ordinary["snapshot_set_id"] in retention["kept_snapshot_sets"]

    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "4")
    after_run = wb.policy_run(name)
    after = after_run["instances"][0]
    assert after["anomaly"] == "clean"  # quiet again, but it holds encrypted blocks
    # Repository retention (daily: 1) would keep only `after`; the hold keeps the last clean
    # point and the anomaly that follows it (without it, `after` would pass for clean).
    retention = after_run["retention"]
    held_ids = {ordinary["restore_point_id"], attacked["restore_point_id"]}
    assert set(retention["held_restore_points"]) == held_ids, retention
    assert held_ids <= set(retention["kept_restore_points"])
    points = _points(wb, instance_id)
    assert first["restore_point_id"] in retention["forgotten_restore_points"] or (
        first["restore_point_id"] not in points
    )  # the first point went in the second run already
    assert after["last_clean_restore_point_id"] == ordinary["restore_point_id"]

    assert points[ordinary["restore_point_id"]]["anomaly"] == "clean"
    assert points[attacked["restore_point_id"]]["anomaly"] == "anomaly"
    assert points[after["restore_point_id"]]["anomaly"] == "clean"
    assert [rp for rp, p in points.items() if p["last_clean"]] == [ordinary["restore_point_id"]]
    table = wb.cli("restore-points", "list", "--instance", instance_id)
    assert "ANOMALY" in table.stdout and "last clean" in table.stdout

    # Past the hold, retention would forget both (a dry run: nothing deleted).
    later = (until + dt.timedelta(days=1)).isoformat()
    dry = wb.cli_json("policy", "retention", name, "--now", later, "--dry-run", "--json")
    assert held_ids <= set(dry["forgotten_restore_points"]), dry
    assert not dry["held_restore_points"]

    restored = wb.cli("restore", "instance", "--last-clean", instance_id, "--wait", timeout=300)
    assert ordinary["restore_point_id"] in restored.stderr
    result = json.loads("\n".join(restored.stdout.splitlines()[1:]))
    assert result["status"] == "completed"
    (data,) = [v for v in result["volumes"] if v["source_volume_id"] == volume_id]
    assert wb.checksum(data["volume_id"]) == clean_content
    assert wb.checksum(volume_id) != clean_content

    # The operator finds it was no attack: resolved (found without --repo), the anomaly
    # counts as clean and the newest point is the last clean one again.
    resolved = wb.cli(
        "restore-points", "resolve", attacked["restore_point_id"][:16],
        "--reason", "bulk import of compressed media",
    )  # fmt: skip
    assert f"its last clean restore point is now {after['restore_point_id'][:12]}" in (
        resolved.stderr
    ), resolved.stderr
    points = _points(wb, instance_id)
    assert points[attacked["restore_point_id"]]["anomaly"] == "resolved"
    assert points[attacked["restore_point_id"]]["anomaly_resolution"] == (
        "bulk import of compressed media"
    )
    assert [rp for rp, p in points.items() if p["last_clean"]] == [after["restore_point_id"]]
    again = wb.cli("restore-points", "resolve", ordinary["restore_point_id"], "--reason", "x",
                   check=False)  # fmt: skip
    assert again.returncode != 0 and "no anomaly to resolve" in again.stderr, again.stderr
    wb.cli("policy", "delete", name)

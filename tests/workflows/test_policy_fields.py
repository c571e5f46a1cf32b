"""Every accepted policy field takes effect (issue 11): a session replicates to every
replication target of its policy, each target's copy tagged and retained by its own rule, and
workers start with the policy's security groups."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

from session_helpers import ROLE_B, SESSION_TAG, Workbench

from ec2backup.models.session import BackupSessionInput, BackupSessionOutput, ReplicationSpec

# Target A: another Region of the backup account, kept by count. Target B: a third Region in
# the production account (reached through its role), kept by age.
TARGET_A = "eu-west-1"
TARGET_B = "us-west-2"

TWO_TARGETS = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [us-east-1]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{days: 30}}
replication:
  targets:
    - region: {target_a}
      retention: {{count: 3}}
    - region: {target_b}
      account_role_arn: {role_b}
      retention: {{days: 1}}
"""


def _session_output(wb: Workbench, session_id: str) -> BackupSessionOutput:
    async def go(client: Any) -> BackupSessionOutput:
        out: BackupSessionOutput = await client.get_workflow_handle(
            session_id, result_type=BackupSessionOutput
        ).result()
        return out

    out: BackupSessionOutput = wb.temporal(go)
    return out


def _back_dated_session(
    wb: Workbench, name: str, instance: str, as_of: dt.datetime
) -> BackupSessionOutput:
    """A session of the policy with a nominal time in the past, replicating to both targets
    the way a policy run does (every target in `replications`)."""
    req = BackupSessionInput(
        instance_id=instance,
        region="us-east-1",
        replications=[
            ReplicationSpec(region=TARGET_A),
            ReplicationSpec(region=TARGET_B, account_role_arn=ROLE_B),
        ],
        policy_name=name,
        as_of=as_of,
    )
    out: BackupSessionOutput = wb.run_session(req)
    return out


def _replicas_of(out: BackupSessionOutput, region: str) -> list[str]:
    (target,) = [r for r in out.replicas if r.region == region]
    return target.replica_ids


def _present(wb: Workbench, region: str, role: str | None, snapshot_ids: list[str]) -> set[str]:
    ec2 = wb.client("ec2", region, role)
    found: set[str] = set()
    for sid in snapshot_ids:
        snaps = ec2.describe_snapshots(
            Filters=[{"Name": "snapshot-id", "Values": [sid]}], OwnerIds=["self"]
        )["Snapshots"]
        found |= {s["SnapshotId"] for s in snaps}
    return found


def test_every_replication_target_gets_a_tagged_set_kept_by_its_own_rule(
    wb: Workbench, tmp_path: Path
) -> None:
    name = f"two-{uuid.uuid4().hex[:6]}"
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")
    instance = inst["instance_id"]
    policy = tmp_path / "two-targets.yaml"
    policy.write_text(
        TWO_TARGETS.format(
            name=name, instance=instance, target_a=TARGET_A, target_b=TARGET_B, role_b=ROLE_B
        )
    )
    wb.cli("policy", "apply", str(policy))

    # One policy run: a tagged replica set in each target.
    run = wb.policy_run(name)
    (outcome,) = run["instances"]
    session = _session_output(wb, outcome["session_id"])
    assert [(r.region, r.account) for r in session.replicas] == [
        (TARGET_A, "123456789012"),
        (TARGET_B, "222222222222"),
    ]
    assert session.replica_ids == [i for r in session.replicas for i in r.replica_ids]
    for region, role in ((TARGET_A, None), (TARGET_B, ROLE_B)):
        args = ["snapshots", "list", "--region", region, "--json"]
        listing = wb.cli_json(*args, *(["--account-role-arn", role] if role else []))
        sets = [rp for rp in listing["restore_points"] if rp["session_id"] == outcome["session_id"]]
        assert len(sets) == 1, (region, listing)
        assert sets[0]["replica"] is True and sets[0]["complete"] is True
        assert sets[0]["set_id"] == session.snapshot_set_id
        assert [s["snapshot_id"] for s in sets[0]["snapshots"]] == _replicas_of(session, region)

    # Three older sessions (nominal times 3.5, 1.5 and 0.5 days ago), then retention at the
    # real clock: target A keeps the newest 3 sets, target B the sets younger than 1 day.
    now = dt.datetime.now(dt.UTC)
    old = {
        age: _back_dated_session(wb, name, instance, now - dt.timedelta(days=age))
        for age in (3.5, 1.5, 0.5)
    }
    out = wb.cli("policy", "retention", str(policy), "--json")
    report = json.loads(out.stdout)
    assert report["deleted_snapshot_sets"] == []  # sources are kept 30 days

    def still_there(region: str, role: str | None, age: float) -> bool:
        ids = _replicas_of(old[age], region)
        present = _present(wb, region, role, ids)
        assert present in (set(), set(ids)), "a replica set is deleted whole or not at all"
        return bool(present)

    # Target A, count 3: the policy run's set and the 0.5 and 1.5 day old ones stay.
    assert [still_there(TARGET_A, None, a) for a in (3.5, 1.5, 0.5)] == [False, True, True]
    # Target B, days 1: only what is younger than a day stays (0.5 days, and the run's own).
    assert [still_there(TARGET_B, ROLE_B, a) for a in (3.5, 1.5, 0.5)] == [False, False, True]
    for region, role in ((TARGET_A, None), (TARGET_B, ROLE_B)):
        ids = _replicas_of(session, region)
        assert _present(wb, region, role, ids) == set(ids)
    expired = {old[3.5].snapshot_set_id, old[1.5].snapshot_set_id}
    assert set(report["deleted_replica_sets"]) == expired
    assert report["deleted_replica_sets"].count(old[3.5].snapshot_set_id) == 2  # both targets
    wb.cli("policy", "delete", name)


SECURITY_GROUPS = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [us-east-1]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{count: 3}}
image_backup:
  repository: {repo}
  workers:
    us-east-1:
      placement: backup
      security_group_ids: [{groups}]
"""


def test_workers_start_with_the_policys_security_groups(wb: Workbench, tmp_path: Path) -> None:
    name = f"sg-{uuid.uuid4().hex[:6]}"
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")
    ec2 = wb.client("ec2")
    vpc = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"][0]
    groups = [
        ec2.create_security_group(
            GroupName=f"{name}-{n}", Description="ec2backup worker", VpcId=vpc["VpcId"]
        )["GroupId"]
        for n in range(2)
    ]
    policy = tmp_path / "sg.yaml"
    policy.write_text(
        SECURITY_GROUPS.format(
            name=name, instance=inst["instance_id"], repo=wb.new_repo(), groups=", ".join(groups)
        )
    )
    wb.cli("policy", "apply", str(policy))
    run = wb.policy_run(name)
    (outcome,) = run["instances"]
    assert outcome["restore_point_id"]
    workers = wb.session_instances(outcome["session_id"])
    assert workers, "the session launched a worker"
    for worker in workers:
        assert sorted(g["GroupId"] for g in worker["SecurityGroups"]) == sorted(groups)
        tags = {t["Key"]: t["Value"] for t in worker.get("Tags", [])}
        assert tags[SESSION_TAG] == outcome["session_id"]
    wb.cli("policy", "delete", name)

"""A policy's archive section (issue 7): `policy apply` adds the archive schedule, an archive
run copies each instance's newest restore point into the Glacier-class archive, a second run
after new backups applies the monthly retention, and removing the section removes the schedule.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from session_helpers import BUCKET, Workbench, wait_for

from ec2backup.models.archive import ArchivePolicyOutput
from ec2backup.models.policy import BackupPolicyOutput
from ec2backup.schedules import archive_schedule_id

POLICY = """\
name: {name}
concurrency: 2
selection:
  tags: {{team: {team}}}
  regions: [us-east-1]
schedule:
  daily: ["03:00"]
snapshots:
  retention: {{count: 5}}
image_backup:
  repository: {repo}
"""
ARCHIVE = """\
archive:
  schedule: {{cron: "0 5 1 * *"}}
  repository: {archive}
  storage_class: GLACIER
  retention: {{monthly: 1}}
"""


def _run(wb: Workbench, name: str, kind: str, known: set[str]) -> tuple[str, Any]:
    """Start a run of the policy's backups or archive and wait for its result."""
    wb.cli("policy", "run", name, *(["--archive"] if kind == "ArchivePolicy" else []))

    new = wait_for(
        lambda: [r for r in wb.workflow_ids(kind, name) if r not in known] or None,
        60,
        f"a {kind} run",
    )[0]
    known.add(new)
    assert wb.wait_status(new, timeout=300) == "COMPLETED"
    result_type = ArchivePolicyOutput if kind == "ArchivePolicy" else BackupPolicyOutput

    async def result(client: Any) -> Any:
        return await client.get_workflow_handle(new, result_type=result_type).result()

    return new, wb.temporal(result)


def test_archive_section_of_a_policy(wb: Workbench, tmp_path: Path) -> None:
    team = f"t{uuid.uuid4().hex[:8]}"
    seeded = wb.cli_json(
        "lab", "seed", "--instances", "2", "--size-gib", "1", "--fill", "0.02", "--tag",
        f"team={team}",
    )["instances"]  # fmt: skip
    instances = {i["instance_id"] for i in seeded}
    name = f"arc-{team}"
    repo = wb.new_repo()
    archive_url = f"s3://{BUCKET}/{wb.name}-policy-archive-{uuid.uuid4().hex[:6]}"
    path = tmp_path / "policy.yaml"
    base = POLICY.format(name=name, team=team, repo=repo)
    path.write_text(base + ARCHIVE.format(archive=archive_url))
    assert wb.cli("policy", "apply", str(path)).stdout.strip() == f"policy {name}: created"

    async def archive_schedule(client: Any) -> Any:
        return await client.get_schedule_handle(archive_schedule_id(name)).describe()

    desc = wb.temporal(archive_schedule)
    assert desc.info.next_action_times[0].day == 1  # monthly, on the 1st

    backups: set[str] = set()
    archives: set[str] = set()
    _, first = _run(wb, name, "BackupPolicy", backups)
    assert {o.instance_id for o in first.instances if o.status == "completed"} == instances
    _, archived = _run(wb, name, "ArchivePolicy", archives)
    assert {a.instance_id for a in archived.archived} == instances
    assert all(a.status == "completed" and a.archive_restore_point_id for a in archived.archived)
    assert archived.retention is not None and archived.retention.forgotten_restore_points == []

    # `ec2backup status` shows the archive's last run and next run next to the backups'.
    # (`status` exits 1 while another policy's last run in this lab was not fully successful)
    rows = {r["policy"]: r for r in json.loads(wb.cli("status", "--json", check=False).stdout)}
    assert rows[name]["archive_last_status"] == "succeeded, 2 archived"
    assert rows[name]["archive_next_run"][8:10] == "01"  # monthly, on the 1st
    assert "succeeded, 2 archived" in wb.cli("status", check=False).stdout

    # Nothing new to archive: the next archive run selects nothing.
    _, idle = _run(wb, name, "ArchivePolicy", archives)
    assert idle.archived == [] and len(idle.notes) == 2

    # New backups, archived again: monthly=1 keeps the newest of this month per instance.
    for inst in seeded:
        wb.cli("lab", "churn", inst["volumes"][0]["volume_id"], "--fraction", "0.02")
    _run(wb, name, "BackupPolicy", backups)
    _, second = _run(wb, name, "ArchivePolicy", archives)
    assert all(a.status == "completed" for a in second.archived) and len(second.archived) == 2
    retention = second.retention
    assert retention is not None
    first_ids = {a.archive_restore_point_id for a in archived.archived}
    second_ids = {a.archive_restore_point_id for a in second.archived}
    assert set(retention.forgotten_restore_points) == first_ids
    assert set(retention.kept_restore_points) == second_ids
    listed = wb.cli_json("repo", "ls", "--repo", archive_url, "--json")
    assert {r["id"] for r in listed} == second_ids
    # The forgotten points' packs are shared with the kept ones or inside the 90-day minimum:
    # nothing may be deleted early.
    assert retention.packs_deleted == 0 and not retention.early_deleted

    # Removing the archive section removes the archive schedule.
    path.write_text(base)
    assert wb.cli("policy", "apply", str(path)).stdout.strip() == f"policy {name}: updated"

    async def gone(client: Any) -> bool:
        from ec2backup.schedules import archive_schedule_exists

        return not await archive_schedule_exists(client, name)

    assert wb.temporal(gone)
    out = wb.cli("policy", "run", name, "--archive", check=False)
    assert out.returncode != 0 and "has no archive section" in out.stderr
    wb.cli("policy", "delete", name)

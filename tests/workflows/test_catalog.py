"""A restore point id is all a restore or an archive needs (issue 12): the catalog resolves it
from durable sources (snapshot tags in every place the installation uses, every repository it
remembers), never from Temporal history.

These are copies of the restore and archive contracts without `--repo`, plus what only the
catalog gives: `restore-points list` of every kind, the cheapest source when none is named,
one-line errors (unknown, ambiguous, bad subnet, wrong password, repository gone), and restores
after Temporal has forgotten every session and policy run.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from session_helpers import BUCKET, REGION, REPO_ROOT, Session, Workbench, wait_for
from test_restore import assert_fails_cleanly, assert_same_content, inventory, made_by, restore


@pytest.fixture(scope="module")
def backed_up(wb: Workbench) -> dict[str, Any]:
    """A 2-volume instance backed up into a fresh repository (full, then incremental)."""
    inst = wb.seed("--volumes", "2", "--size-gib", "1", "--fill", "0.03", "--tag", "app=cat")
    repo = wb.new_repo()
    full = wb.backup(inst["instance_id"], "--repo", repo)
    wb.cli("lab", "churn", inst["volumes"][0]["volume_id"], "--fraction", "0.01")
    incremental = wb.backup(inst["instance_id"], "--repo", repo)
    return {"instance": inst, "repo": repo, "sessions": [full, incremental]}


def _rp(session: Session) -> str:
    assert session.result is not None and session.result["restore_point_id"]
    return str(session.result["restore_point_id"])


def _common(a: str, b: str) -> str:
    """The longest common prefix of two ids."""
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return a[:n]


def _listing(wb: Workbench, *args: str) -> list[dict[str, Any]]:
    out = wb.cli("restore-points", "list", "--json", *args)
    return list(json.loads(out.stdout)["restore_points"])


def test_restore_from_backup_without_repo(wb: Workbench, backed_up: dict[str, Any]) -> None:
    """`restore instance RP --source backup --wait` with the id alone: the catalog finds the
    repository; the restored volumes hold the session's bytes."""
    session = backed_up["sessions"][1]
    r = restore(wb, "instance", _rp(session), "--source", "backup", "--wait")
    assert r.result is not None
    assert r.result["source"] == "backup" and r.result["bytes_written"] > 0
    assert_same_content(wb, r.device_volumes(), session)


def test_restore_volume_from_backup_by_prefix(wb: Workbench, backed_up: dict[str, Any]) -> None:
    session = backed_up["sessions"][0]
    prefix = _rp(session)[:12]
    r = restore(wb, "volume", prefix, "--source", "backup", "--device", "/dev/sdg", "--wait")
    assert r.result is not None and r.result["source"] == "backup"
    assert_same_content(wb, r.device_volumes(), session)


def test_dry_run_without_repo(wb: Workbench, backed_up: dict[str, Any]) -> None:
    before = inventory(wb)
    r = restore(wb, "instance", _rp(backed_up["sessions"][0]), "--source", "backup", "--dry-run")
    assert r.result is not None and r.result["status"] == "dry-run ok"
    assert inventory(wb) == before


def test_without_source_the_cheapest_is_chosen_and_named(
    wb: Workbench, backed_up: dict[str, Any]
) -> None:
    """A backup whose snapshot set still exists restores from the snapshots (nothing to copy
    back) and says so; once the set is gone, from the backup."""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02", "--seed", "12")
    session = wb.backup(inst["instance_id"], "--repo", backed_up["repo"])
    rp = _rp(session)
    r = restore(wb, "volume", rp, "--device", "/dev/sdf", "--wait")
    assert r.result is not None and r.result["source"] == "snapshot"
    assert "source: snapshot" in r.stderr, r.stderr
    assert_same_content(wb, r.device_volumes(), session)
    assert session.result is not None
    ec2 = wb.client("ec2")
    for snapshot_id in session.result["snapshot_ids"]:
        ec2.delete_snapshot(SnapshotId=snapshot_id)
    r = restore(wb, "volume", rp, "--device", "/dev/sdf", "--wait")
    assert r.result is not None and r.result["source"] == "backup"
    assert "source: backup" in r.stderr, r.stderr
    assert_same_content(wb, r.device_volumes(), session)


def test_list_shows_every_kind_newest_first(wb: Workbench, backed_up: dict[str, Any]) -> None:
    instance_id = backed_up["instance"]["instance_id"]
    rows = _listing(wb, "--instance", instance_id)
    by_id = {r["id"]: r for r in rows}
    for session in backed_up["sessions"]:
        assert session.result is not None
        backup = by_id[_rp(session)]
        assert backup["kind"] == "backup"
        assert backup["where"] == backed_up["repo"]
        assert backup["instance_id"] == instance_id
        assert backup["snapshot_set_id"] == session.result["snapshot_set_id"]
        devices = sorted(v["device"] for v in session.result["volumes"])
        assert sorted(backup["volumes"]) == devices
        snapshot_set = by_id[session.result["snapshot_set_id"]]
        assert snapshot_set["kind"] == "snapshot"
        assert snapshot_set["where"] == f"{REGION}/123456789012"
        assert snapshot_set["backup_id"] == _rp(session)  # recorded in the encrypted tags
        assert sorted(snapshot_set["volumes"]) == devices
    created = [r["created"] for r in rows]
    assert created == sorted(created, reverse=True)
    assert {r["instance_id"] for r in rows} == {instance_id}
    table = wb.cli("restore-points", "list", "--instance", instance_id).stdout
    assert _rp(backed_up["sessions"][0])[:12] in table and "backup" in table


def test_unknown_and_ambiguous_ids_fail_in_one_line(
    wb: Workbench, backed_up: dict[str, Any]
) -> None:
    before = inventory(wb)
    unknown = wb.cli("restore", "instance", "0123456789abcdef", "--wait", check=False)
    assert unknown.returncode != 0
    lines = unknown.stderr.strip().splitlines()
    assert len(lines) == 1 and "0123456789abcdef" in lines[0], unknown.stderr
    # Two ids sharing a prefix: the longest prefix common to two listed restore points.
    ids = sorted({r["id"] for r in _listing(wb)})
    a, b = max(itertools.pairwise(ids), key=lambda p: len(_common(*p)))
    prefix = _common(a, b)
    assert len(prefix) >= 4, (a, b)
    ambiguous = wb.cli("restore", "instance", prefix, "--wait", check=False)
    assert ambiguous.returncode != 0
    lines = ambiguous.stderr.strip().splitlines()
    assert len(lines) == 1, ambiguous.stderr
    assert "ambiguous" in lines[0] and a in lines[0] and b in lines[0], lines[0]
    assert inventory(wb) == before


def test_bad_subnet_fails_in_one_line(wb: Workbench, backed_up: dict[str, Any]) -> None:
    rp = _rp(backed_up["sessions"][0])
    assert_fails_cleanly(
        wb,
        "instance",
        rp,
        "--source",
        "backup",
        "--subnet",
        "subnet-0000000000000dead",
        expect=("subnet-0000000000000dead",),
    )


def test_wrong_password_and_missing_repository(
    wb: Workbench, backed_up: dict[str, Any], tmp_path: Path
) -> None:
    """A restore point in a repository the orchestrator's password does not open, and one
    whose repository is gone: each restore fails in one line naming the repository (and, for
    the gone one, the id); the listing reports both and goes on."""
    other = {**wb.env, "EC2BACKUP_REPO_PASSWORD": "another-password"}
    locked = f"s3://{BUCKET}/catalog-locked-{os.getpid()}"
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1024 * 1024))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ec2backup.cli", *args],
            env=other,
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            timeout=120,
        )

    assert cli("repo", "init", "--repo", locked).returncode == 0
    made = cli("image", "backup", str(image), "--repo", locked)
    assert made.returncode == 0, made.stderr
    rp_locked = made.stdout.split()[-1]
    assert_fails_cleanly(
        wb,
        "volume",
        rp_locked,
        "--source",
        "backup",
        "--device",
        "/dev/sdf",
        expect=(locked, "password"),
    )

    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--seed", "31")
    gone = wb.new_repo()
    rp_gone = _rp(wb.backup(inst["instance_id"], "--repo", gone))
    s3 = wb.client("s3")
    prefix = gone.removeprefix(f"s3://{BUCKET}/") + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
    assert_fails_cleanly(
        wb, "instance", rp_gone, "--source", "backup", expect=(rp_gone[:12], gone, "gone")
    )
    listing = wb.cli("restore-points", "list", "--json")
    assert gone in listing.stderr and locked in listing.stderr  # reported; the listing goes on
    assert backed_up["repo"] in {r["where"] for r in json.loads(listing.stdout)["restore_points"]}


def test_archive_without_repo(wb: Workbench, backed_up: dict[str, Any]) -> None:
    session = backed_up["sessions"][0]
    archive_url = f"s3://{BUCKET}/catalog-archive-{os.getpid()}"
    proc = wb.cli("archive", _rp(session), "--to", archive_url, "--wait", timeout=400)
    lines = proc.stdout.splitlines()
    result = json.loads("\n".join(lines[1:]))
    assert result["status"] == "completed"
    archived = result["archive_restore_point_id"]
    rows = {r["id"]: r for r in _listing(wb, "--instance", backed_up["instance"]["instance_id"])}
    assert rows[archived]["kind"] == "archive"
    assert rows[archived]["storage_class"] == "GLACIER"
    assert rows[archived]["retrieval_needed"] is True
    assert rows[archived]["archived_from"] == _rp(session)


def test_catalog_survives_temporal_forgetting_every_run(
    wb: Workbench, backed_up: dict[str, Any]
) -> None:
    """`temporal workflow delete` of every BackupSession and BackupPolicy: the listing and a
    restore from the backup do not need them."""
    ids = wb.workflow_ids("BackupSession", "adhoc")
    assert ids

    async def delete_all(client: Any) -> int:
        from temporalio.api.common.v1 import WorkflowExecution
        from temporalio.api.workflowservice.v1 import DeleteWorkflowExecutionRequest

        query = "WorkflowType = 'BackupSession' OR WorkflowType = 'BackupPolicy'"
        n = 0
        async for wf in client.list_workflows(query):
            await client.workflow_service.delete_workflow_execution(
                DeleteWorkflowExecutionRequest(
                    namespace=client.namespace,
                    workflow_execution=WorkflowExecution(workflow_id=wf.id, run_id=wf.run_id),
                )
            )
            n += 1
        return n

    assert wb.temporal(delete_all) >= len(ids)

    async def remaining(client: Any) -> int:
        query = "WorkflowType = 'BackupSession' OR WorkflowType = 'BackupPolicy'"
        return len([wf async for wf in client.list_workflows(query)])

    wait_for(lambda: wb.temporal(remaining) == 0 or None, 60, "Temporal to forget every run")
    rows = {r["id"]: r for r in _listing(wb, "--instance", backed_up["instance"]["instance_id"])}
    for session in backed_up["sessions"]:
        assert rows[_rp(session)]["kind"] == "backup"
    session = backed_up["sessions"][1]
    r = restore(wb, "instance", _rp(session), "--source", "backup", "--wait")
    assert r.result is not None and r.result["source"] == "backup"
    assert_same_content(wb, r.device_volumes(), session)
    assert not made_by(wb, r.restore_id).get("snapshots")

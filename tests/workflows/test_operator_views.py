"""The operator's daily views: `session list` (policy, instance, status, phase, bytes, duration
from the sessions' memo), `session report RUN` (every instance of a policy run) and `status`
(the last run of every policy), after one real policy run of two tiny instances."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

from session_helpers import Workbench, wait_for

POLICY = """\
name: {name}
concurrency: 2
selection:
  tags: {{team: {team}}}
  regions: [us-east-1]
schedule:
  daily: ["03:00"]
snapshots:
  retention: {{count: 3}}
"""


def _seed_and_apply(wb: Workbench, tmp_path: Path, prefix: str) -> tuple[str, set[str]]:
    """Two tiny instances and a snapshot-only policy protecting them (by a unique tag)."""
    team = f"t{uuid.uuid4().hex[:8]}"  # never all digits: YAML would read a number
    name = f"{prefix}-{team}"
    seeded = {
        wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--tag", f"team={team}")[
            "instance_id"
        ]
        for _ in range(2)
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY.format(name=name, team=team))
    wb.cli("policy", "apply", str(path))
    return name, seeded


def _run_policy(wb: Workbench, name: str) -> str:
    """`policy run NAME`, then wait until that run completed; its workflow id."""
    wb.cli("policy", "run", name)
    run_id = str(
        wait_for(
            lambda: wb.workflow_ids("BackupPolicy", name)[:1], 30, "the policy run", interval=0.5
        )[0]
    )
    assert wb.wait_status(run_id, timeout=120) == "COMPLETED"
    return run_id


def _status(wb: Workbench, *args: str) -> Any:
    """`status` exits 1 while the last run of any policy of the lab (other tests' too) was not
    fully successful: its output is read whatever the exit code."""
    done = wb.cli("status", *args, check=False)
    assert done.returncode in (0, 1), done.stderr
    return done


def _status_row(wb: Workbench, name: str, run_id: str) -> dict[str, Any]:
    def row() -> dict[str, Any] | None:
        rows = {r["policy"]: r for r in json.loads(_status(wb, "--json").stdout)}
        found = rows.get(name)
        return found if found and found["last_run_id"] == run_id else None

    return dict(wait_for(row, 30, f"policy {name} in `status`", interval=0.5))


def test_list_report_and_status_after_a_policy_run(wb: Workbench, tmp_path: Path) -> None:
    name, seeded = _seed_and_apply(wb, tmp_path, "views")
    try:
        run_id = _run_policy(wb, name)

        # -- session report RUN: every instance, completed, with its session and set --------
        report = wb.cli_json("session", "report", run_id, "--json")
        assert report["policy"] == name and report["phase"] == "done"
        outcomes = {o["instance_id"]: o for o in report["instances"]}
        assert set(outcomes) == seeded
        sessions = {}
        for instance_id, o in outcomes.items():
            assert o["status"] == "completed", o
            assert o["session_id"] and o["session_id"].startswith(f"{run_id}-"), o
            assert o["region"] == "us-east-1" and o["error"] is None
            assert o["seconds"] is not None and o["seconds"] > 0
            result = wb.session_result(o["session_id"], timeout=30)
            # Snapshot-only: the restore point is the session's snapshot set.
            assert o["restore_point_id"] == result["snapshot_set_id"] is not None
            sessions[o["session_id"]] = instance_id
        assert report["retention"] is not None and report["retention"]["policy"] == name
        text = wb.cli("session", "report", run_id).stdout
        for header in ("instance", "region", "status", "session", "restore point", "bytes"):
            assert header in text, text
        assert "duration" in text and "error" in text
        assert "2 completed" in text and "retention: deleted 0 snapshot sets" in text, text
        for sid in sessions:
            assert sid in text

        # One session's id: a one-row report of that session.
        sid, instance_id = next(iter(sessions.items()))
        one = wb.cli_json("session", "report", sid, "--json")
        assert [(o["instance_id"], o["status"], o["session_id"]) for o in one["instances"]] == [
            (instance_id, "completed", sid)
        ]

        # -- session list --policy: one row per session, from the memo ----------------------
        def listed() -> list[dict[str, Any]] | None:
            rows = wb.cli_json("session", "list", "--policy", name, "--json")
            done = [r for r in rows if r["phase"] == "completed" and r["status"] == "COMPLETED"]
            return rows if len(done) == len(sessions) else None

        rows = wait_for(listed, 30, "both sessions listed as completed", interval=0.5)
        assert {r["session_id"]: r["instance"] for r in rows} == sessions
        for r in rows:
            assert r["policy"] == name and r["region"] == "us-east-1"
            assert r["bytes"] == r["bytes_stored"] == 0  # snapshot-only: nothing stored by us
            expected = outcomes[r["instance"]]["seconds"]
            assert 0 < r["duration"] < 120 and abs(r["duration"] - expected) < 5, (r, expected)
            assert r["close_time"] is not None
        running = wb.cli_json("session", "list", "--policy", name, "--status", "running", "--json")
        assert running == []
        text = wb.cli("session", "list", "--policy", name).stdout
        for header in ("session", "policy", "instance", "status", "phase", "bytes", "duration"):
            assert header in text, text
        assert all(i in text for i in seeded) and "completed" in text
        bad = wb.cli("session", "list", "--status", "sleeping", check=False)
        assert bad.returncode != 0 and "--status" in bad.stderr

        # -- status: the policy's last run succeeded; a next run is due ---------------------
        row = _status_row(wb, name, run_id)
        assert row["last_status"] == "succeeded" and row["run_status"] == "COMPLETED", row
        assert row["instances"] == 2 and row["failed_instances"] == 0, row
        assert row["paused"] is False and row["next_run"] and row["next_run"][11:16] == "03:00"
        assert row["last_run_start"]
        text = _status(wb).stdout
        assert name in text and "succeeded" in text and "next run" in text, text
        assert re.search(r"\bstatus +The last run of every applied policy", wb.cli("--help").stdout)

        # -- an unknown id: one line naming it, non-zero --------------------------------------
        missing = wb.cli("session", "report", "no-such-id", check=False)
        assert missing.returncode != 0
        assert missing.stderr.strip().splitlines() == [missing.stderr.strip()], missing.stderr
        assert "no-such-id" in missing.stderr and missing.stdout == ""
    finally:
        wb.cli("policy", "delete", name, check=False)


def test_a_failed_instance_shows_in_every_view(wb: Workbench, tmp_path: Path) -> None:
    """One of two sessions fails (a permanent error on its CreateSnapshots): the run still
    completes, and `status` calls it failed (1 of 2); report and list show which and why."""
    name, seeded = _seed_and_apply(wb, tmp_path, "views-fail")
    try:
        fault = ("--api", "CreateSnapshots", "--error", "UnauthorizedOperation", "--times", "1")
        wb.cli("lab", "fault", *fault)
        run_id = _run_policy(wb, name)
        wb.cli("lab", "fault", "--clear")

        report = wb.cli_json("session", "report", run_id, "--json")
        by_status = {o["status"]: o for o in report["instances"]}
        assert sorted(o["status"] for o in report["instances"]) == ["completed", "failed"]
        assert {o["instance_id"] for o in report["instances"]} == seeded
        failed = by_status["failed"]
        assert "UnauthorizedOperation" in failed["error"] and failed["restore_point_id"] is None
        text = wb.cli("session", "report", run_id).stdout
        assert "1 completed, 1 failed" in text and "UnauthorizedOperation" in text, text

        def failed_rows() -> list[dict[str, Any]] | None:
            rows = wb.cli_json("session", "list", "--policy", name, "--status", "failed", "--json")
            return rows or None

        rows = wait_for(failed_rows, 30, "the failed session listed", interval=0.5)
        assert [(r["session_id"], r["instance"], r["status"]) for r in rows] == [
            (failed["session_id"], failed["instance_id"], "FAILED")
        ]
        assert rows[0]["phase"] == "snapshotting"  # where it failed, kept by the memo

        row = _status_row(wb, name, run_id)
        assert row["last_status"] == "failed" and row["run_status"] == "COMPLETED", row
        assert (row["instances"], row["completed_instances"], row["failed_instances"]) == (2, 1, 1)
        status = _status(wb)
        assert status.returncode == 1, status.stdout  # this policy's last run failed
        line = next(ln for ln in status.stdout.splitlines() if name in ln)
        assert "failed (1 of 2)" in line, status.stdout
    finally:
        wb.cli("lab", "fault", "--clear", check=False)
        wb.cli("policy", "delete", name, check=False)

"""Policies on Temporal Schedules: apply is idempotent, run starts at once, pause stops new
runs, and a run backs up exactly the instances the policy protects (tags, two Regions,
priority between policies), reporting every instance's outcome."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

from session_helpers import Workbench, wait_for

POLICY = """\
name: {name}
priority: {priority}
concurrency: 2
selection:
  tags: {{team: {team}}}
  regions: [us-east-1, eu-west-1]
schedule:
  daily: ["{time}"]
snapshots:
  retention: {{count: 3}}
"""


def _policy(tmp_path: Path, name: str, team: str, priority: int = 0, time: str = "03:00") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(POLICY.format(name=name, team=team, priority=priority, time=time))
    return path


def _result(wb: Workbench, workflow_id: str) -> dict[str, Any]:
    async def go(client: Any) -> dict[str, Any]:
        return dict(await client.get_workflow_handle(workflow_id).result())

    return dict(wb.temporal(go))


def test_apply_is_idempotent_and_updates(wb: Workbench, tmp_path: Path) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    path = _policy(tmp_path, name, "nobody")
    assert wb.cli("policy", "apply", str(path)).stdout.strip() == f"policy {name}: created"
    assert wb.cli("policy", "apply", str(path)).stdout.strip() == f"policy {name}: unchanged"
    changed = _policy(tmp_path, name, "nobody", time="05:30")
    assert wb.cli("policy", "apply", str(changed)).stdout.strip() == f"policy {name}: updated"
    shown = wb.cli_json("policy", "show", name)
    assert shown["policy"]["schedule"]["daily"] == ["05:30"]
    assert shown["next_runs"] and shown["next_runs"][0][11:16] == "05:30"
    wb.cli("policy", "pause", name)
    listed = {r["name"]: r for r in wb.cli_json("policy", "list", "--json")}
    assert listed[name]["paused"] is True
    wb.cli("policy", "delete", name)
    missing = wb.cli("policy", "show", name, check=False)
    assert missing.returncode != 0 and "is not applied" in missing.stderr


def test_invalid_policy_changes_nothing(wb: Workbench, tmp_path: Path) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    path = _policy(tmp_path, name, "x").read_text().replace("{count: 3}", "{count: 0}")
    bad = tmp_path / "bad.yaml"
    bad.write_text(path)
    out = wb.cli("policy", "apply", str(bad), check=False)
    assert out.returncode != 0
    assert len(out.stderr.strip().splitlines()) == 1 and "snapshots.retention.count" in out.stderr
    assert name not in {r["name"] for r in wb.cli_json("policy", "list", "--json")}


def test_run_protects_exactly_the_selected_instances(wb: Workbench, tmp_path: Path) -> None:
    team = f"t{uuid.uuid4().hex[:8]}"  # never all digits: YAML would read a number
    east = [
        wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--tag", f"team={team}")
        for _ in range(2)
    ]
    west = wb.seed(
        "--volumes",
        "1",
        "--size-gib",
        "1",
        "--fill",
        "0.01",
        "--tag",
        f"team={team}",
        "--region",
        "eu-west-1",
    )
    other = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01", "--tag", "team=other")
    # The same team's instance in eu-west-1 is also selected by a higher-priority policy.
    low, high = f"low-{team}", f"high-{team}"
    wb.cli("policy", "apply", str(_policy(tmp_path, low, team, priority=1)))
    high_path = tmp_path / "high.yaml"
    high_path.write_text(
        POLICY.format(name=high, team=team, priority=9, time="03:00").replace(
            "regions: [us-east-1, eu-west-1]", "regions: [eu-west-1]"
        )
    )
    wb.cli("policy", "apply", str(high_path))
    wb.cli("policy", "pause", high)  # paused schedules still own their instances
    wb.cli("policy", "run", low)
    wait_for(
        lambda: wb.workflow_ids("BackupPolicy", low) or None,
        30,
        "the policy run to start",
        interval=0.5,
    )
    run_id = wb.workflow_ids("BackupPolicy", low)[0]
    assert wb.wait_status(run_id, timeout=180) == "COMPLETED"
    result = _result(wb, run_id)
    outcomes = {o["instance_id"]: o for o in result["instances"]}
    assert set(outcomes) == {i["instance_id"] for i in east}
    assert all(o["status"] == "completed" for o in outcomes.values())
    assert west["instance_id"] not in outcomes and other["instance_id"] not in outcomes
    assert any(west["instance_id"] in note and high in note for note in result["notes"])

    # The policy's sessions are found by search attribute.

    # Visibility (list queries) is eventually consistent: allow it to catch up.
    expected = {o["session_id"] for o in outcomes.values()}
    wait_for(
        lambda: set(wb.workflow_ids("BackupSession", low)) == expected or None,
        30,
        "the sessions to be listed by PolicyName",
        interval=0.5,
    )
    for name in (low, high):
        wb.cli("policy", "delete", name)


def test_apply_refuses_a_missing_repository(wb: Workbench, tmp_path: Path) -> None:
    name = f"p-{uuid.uuid4().hex[:6]}"
    text = _policy(tmp_path, name, "x").read_text()
    missing = f"s3://ec2backup-tests/no-repo-{uuid.uuid4().hex[:6]}"
    bad = tmp_path / "norepo.yaml"
    bad.write_text(text + f"image_backup:\n  repository: {missing}\n")
    out = wb.cli("policy", "apply", str(bad), check=False)
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "image_backup.repository" in lines[0] and missing in lines[0], lines
    assert name not in {r["name"] for r in wb.cli_json("policy", "list", "--json")}


def test_overlapping_runs_are_skipped_and_pause_stops_runs(wb: Workbench, tmp_path: Path) -> None:
    """The schedule is sped up to fire every second (simulated time): runs that would overlap
    a running one are skipped, and a paused policy starts no new run."""
    from datetime import timedelta

    from temporalio.client import ScheduleIntervalSpec, ScheduleSpec, ScheduleUpdate

    from ec2backup.schedules import schedule_id

    team = f"t{uuid.uuid4().hex[:8]}"
    wb.cli_json(
        "lab", "seed", "--instances", "3", "--size-gib", "1", "--fill", "0.01", "--tag",
        f"team={team}",
    )  # fmt: skip
    name = f"ovl-{team}"
    path = tmp_path / "ovl.yaml"
    path.write_text(POLICY.format(name=name, team=team, priority=0, time="03:00").replace(
        "concurrency: 2", "concurrency: 1"))  # fmt: skip
    wb.cli("policy", "apply", str(path))

    async def every_second(client: Any) -> None:
        def update(inp: Any) -> ScheduleUpdate:
            schedule = inp.description.schedule
            schedule.spec = ScheduleSpec(
                intervals=[ScheduleIntervalSpec(every=timedelta(seconds=1))]
            )
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(schedule_id(name)).update(update)

    async def info(client: Any) -> Any:
        return (await client.get_schedule_handle(schedule_id(name)).describe()).info

    wb.temporal(every_second)
    peak = 0

    def skipped_twice_and_one_done() -> Any:
        nonlocal peak
        i = wb.temporal(info)
        peak = max(peak, len(i.running_actions))
        done = len(i.recent_actions) - len(i.running_actions)
        return i if i.num_actions_skipped_overlap >= 2 and done >= 1 else None

    wait_for(skipped_twice_and_one_done, 120, "overlapping runs to be skipped", interval=0.3)
    assert peak == 1

    wb.cli("policy", "pause", name)
    paused = wb.temporal(info)
    wait_for(lambda: not wb.temporal(info).running_actions or None, 120, "the run to end")
    before = wb.temporal(info).num_actions
    time.sleep(4)  # four due times pass while paused
    assert wb.temporal(info).num_actions == before
    assert paused.num_actions <= before
    wb.cli("policy", "resume", name)
    wait_for(lambda: wb.temporal(info).num_actions > before or None, 30, "runs to start again")
    wb.cli("policy", "delete", name)


def test_pause_signal_holds_the_run_until_resume(wb: Workbench, tmp_path: Path) -> None:
    """`pause` on a BackupPolicy run (started as the Web UI or `temporal` CLI would: the policy
    as JSON input) holds back sessions not yet started; `resume` lets the run finish."""
    from ec2backup.models.policy import BackupPolicyOutput
    from ec2backup.policy import load_policy
    from ec2backup.temporal import TASK_QUEUE

    team = f"t{uuid.uuid4().hex[:8]}"
    wb.cli_json(
        "lab", "seed", "--instances", "3", "--size-gib", "1", "--fill", "0.01", "--tag",
        f"team={team}",
    )  # fmt: skip
    path = tmp_path / "paused.yaml"
    path.write_text(POLICY.format(name=f"pz-{team}", team=team, priority=0, time="03:00").replace(
        "concurrency: 2", "concurrency: 1"))  # fmt: skip
    policy = load_policy(path).model_dump(mode="json")
    run_id = f"policy-pz-{team}"

    async def start_paused(client: Any) -> None:
        handle = await client.start_workflow(
            "BackupPolicy", policy, id=run_id, task_queue=TASK_QUEUE
        )
        await handle.signal("pause")

    async def report(client: Any) -> BackupPolicyOutput:
        out: BackupPolicyOutput = await client.get_workflow_handle(run_id).query(
            "report", result_type=BackupPolicyOutput
        )
        return out

    wb.temporal(start_paused)
    first = wait_for(
        lambda: (r := wb.temporal(report)).instances and r.paused and r, 30, "the paused run"
    )
    time.sleep(4)  # sessions would finish in about a second each
    held = wb.temporal(report)
    assert held.paused and held.phase == "backing up"
    started = [o for o in held.instances if o.status != "pending"]
    # At most the session that started before the pause arrived; none since.
    assert len(held.instances) == 3 and len(started) <= 1, held
    assert len(started) == len([o for o in first.instances if o.status != "pending"])

    async def resume(client: Any) -> None:
        await client.get_workflow_handle(run_id).signal("resume")

    wb.temporal(resume)
    assert wb.wait_status(run_id, timeout=120) == "COMPLETED"
    done = _result(wb, run_id)
    assert [o["status"] for o in done["instances"]] == ["completed"] * 3

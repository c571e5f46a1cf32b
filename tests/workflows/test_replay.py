"""Replay: histories of real runs are replayed against the current workflow code.

What it guards: Temporal re-executes workflow code from the start whenever a worker picks up a
workflow it does not have in cache (a restart, a deploy, cache eviction) and checks that the
code issues the same commands (activities, timers, children, memo/search-attribute upserts) in
the same order as the history recorded. A workflow change that alters that sequence without
`workflow.patched(...)`, or non-determinism in workflow code (the clock, randomness, uuid, I/O,
iterating a set...), makes running workflows fail with a NondeterminismError after a deploy.
This module runs every workflow type this suite can produce cheaply through the product's own
entry points (the CLI and the module's orchestrator, against the lab), fetches each completed
history, and replays all of them with `temporalio.worker.Replayer` on the workflow classes of
`workflows/*.py`:

- `BackupSession`: `ec2backup backup ... --repo` (snapshots, image backup on a worker, commit);
- `BackupPolicy` and its `BackupSession` children: a tag-selected, snapshot-only policy run;
- `Retention`: `ec2backup policy retention FILE`;
- `Archive`: `ec2backup archive ...` (a worker copies), then again (already archived: no worker);
- `ArchivePolicy`: `policy run --archive` (nothing of its policy to archive: selection and
  archive retention);
- `Restore`: a volume from the snapshot set, a dry run, from the backup, and from the archive
  (retrieval polls with durable timers);
- `Janitor`: one sweep.
(`AgentProbe` is registered with the replayer but needs a live agent, so no history of it.)

Within one run, this catches non-determinism of the code against itself (the histories were
just made by the same code). Catching an incompatible *change* needs histories made by an older
version: save one as a JSON fixture and replay it in a test, e.g.

    history = await client.get_workflow_handle(workflow_id).fetch_history()
    Path("tests/workflows/histories/backup-session-v1.json").write_text(history.to_json())
    # or: temporal workflow show --workflow-id ID --output json > backup-session-v1.json

    # the original workflow id: BackupPolicy/ArchivePolicy derive their children's ids from it
    history = WorkflowHistory.from_json(workflow_id, path.read_text())
    await Replayer(workflows=WORKFLOWS, data_converter=payloads.data_converter()).replay_workflow(
        history
    )

(no fixtures are committed yet). Running this module with `EC2BACKUP_REPLAY_SAVE_DIR=DIR` set
writes every history this module replays to DIR as `<WorkflowType>-<workflow id>.json`: copy
the ones worth keeping into the test tree. When such a fixture fails after an intended change,
guard the change with `workflow.patched("...")` rather than regenerating the fixture: the old
histories are what running workflows still have.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from session_helpers import BUCKET, Workbench, wait_for
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from ec2backup import payloads
from ec2backup.models.janitor import JanitorInput, JanitorOutput
from ec2backup.temporal import TASK_QUEUE
from workflows.agent_probe import AgentProbe
from workflows.archive import Archive
from workflows.archive_policy import ArchivePolicy
from workflows.backup_policy import BackupPolicy
from workflows.backup_session import BackupSession
from workflows.janitor import Janitor
from workflows.restore import Restore
from workflows.retention import PolicyRetention

WORKFLOWS = [
    BackupSession,
    BackupPolicy,
    PolicyRetention,
    Archive,
    ArchivePolicy,
    Restore,
    Janitor,
    AgentProbe,
]
TINY = ("--volumes", "1", "--size-gib", "1", "--fill", "0.02")

SNAPSHOT_POLICY = """\
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
ARCHIVE_POLICY = """\
name: {name}
selection:
  tags: {{team: {team}}}
  regions: [us-east-1]
schedule:
  daily: ["03:00"]
snapshots:
  retention: {{count: 3}}
image_backup:
  repository: {repo}
archive:
  schedule: {{cron: "0 5 1 * *"}}
  repository: {archive}
  storage_class: GLACIER
  retention: {{monthly: 1}}
"""


def _cli_result(wb: Workbench, *args: str) -> tuple[str, dict[str, Any]]:
    """`ec2backup ARGS --wait`: the workflow id (first line) and the result JSON (the rest)."""
    lines = wb.cli(*args, "--wait", timeout=400).stdout.splitlines()
    return lines[0].strip(), dict(json.loads("\n".join(lines[1:])))


def _new_run(wb: Workbench, kind: str, policy: str) -> str:
    """The id of the one `kind` workflow of `policy` (visibility is eventually consistent)."""

    found: list[str] = wait_for(
        lambda: wb.workflow_ids(kind, policy) or None, 60, f"a {kind} run of {policy}"
    )
    assert len(found) == 1, found
    return found[0]


def _wait_result(wb: Workbench, workflow_id: str) -> dict[str, Any]:
    async def go(client: Any) -> dict[str, Any]:
        return dict(await client.get_workflow_handle(workflow_id).result())

    assert wb.wait_status(workflow_id, timeout=300) == "COMPLETED"
    return dict(wb.temporal(go))


def _produce(wb: Workbench, tmp_path: Path) -> dict[str, str]:
    """Run one of each cheap workflow shape; workflow id -> what it is."""
    started: dict[str, str] = {}
    team = f"t{uuid.uuid4().hex[:8]}"  # never all digits: YAML would read a number
    hot = wb.seed(*TINY)
    tagged = wb.seed(*TINY, "--tag", f"team={team}")
    volume = hot["volumes"][0]["volume_id"]
    repo = wb.new_repo()
    archive_url = f"s3://{BUCKET}/{wb.name}-archive-{uuid.uuid4().hex[:6]}"

    # A policy run (snapshot-only) in the background while the image backup runs.
    snap_name = f"replay-{team}"
    snap_file = tmp_path / "snapshots.yaml"
    snap_file.write_text(SNAPSHOT_POLICY.format(name=snap_name, team=team))
    wb.cli("policy", "apply", str(snap_file))
    arc_name = f"replay-arc-{team}"
    arc_file = tmp_path / "archive.yaml"
    arc_file.write_text(
        ARCHIVE_POLICY.format(name=arc_name, team=f"{team}-none", repo=repo, archive=archive_url)
    )
    wb.cli("policy", "apply", str(arc_file))
    try:
        wb.cli("policy", "run", snap_name)

        session = wb.backup(hot["instance_id"], "--repo", repo)
        assert session.result is not None and session.result["restore_point_id"]
        assert session.result["workers_provisioned"] >= 1, session.result
        started[session.session_id] = "BackupSession (image backup)"
        rp = session.result["restore_point_id"]

        policy_run = _new_run(wb, "BackupPolicy", snap_name)
        report = _wait_result(wb, policy_run)
        children = [o["session_id"] for o in report["instances"]]
        assert [o["instance_id"] for o in report["instances"]] == [tagged["instance_id"]]
        assert [o["status"] for o in report["instances"]] == ["completed"], report
        started[policy_run] = "BackupPolicy (snapshot-only)"
        started.update({c: "BackupSession (policy child)" for c in children})

        wb.cli("policy", "retention", str(snap_file), "--json")
        started[_new_run(wb, "Retention", snap_name)] = "Retention"

        archive_id, archived = _archive_result(wb, rp, repo, archive_url)
        assert archived["status"] == "completed" and archived["worker_instance_id"], archived
        started[archive_id] = "Archive (on a worker)"
        again_id, again = _archive_result(wb, rp, repo, archive_url)
        assert again["status"] == "already archived", again
        started[again_id] = "Archive (already archived)"

        set_id = session.result["snapshot_set_id"]
        for what, args in (
            ("from the snapshot set", (set_id,)),
            ("dry run", (rp, "--repo", repo, "--dry-run")),
            ("from the backup", (rp, "--repo", repo)),
            (
                "from the archive",
                (rp, "--source", "archive", "--repo", archive_url,
                 "--retrieval-poll-seconds", "0.5"),
            ),
        ):  # fmt: skip
            wait = () if "--dry-run" in args else ("--wait",)
            out = wb.cli("restore", "volume", *args, "--volume-id", volume, *wait, timeout=400)
            lines = out.stdout.splitlines()
            result = json.loads("\n".join(lines[1:]))
            assert result["status"] in ("completed", "dry-run ok"), result
            if what == "from the archive":
                assert result["source"] == "archive" and result["retrieval_seconds"], result
            started[lines[0].strip()] = f"Restore ({what})"

        wb.cli("policy", "run", arc_name, "--archive")
        arc_run = _new_run(wb, "ArchivePolicy", arc_name)
        arc_report = _wait_result(wb, arc_run)
        assert arc_report["archived"] == [], arc_report
        started[arc_run] = "ArchivePolicy (nothing to archive)"

        janitor_id = f"replay-janitor-{uuid.uuid4().hex[:8]}"

        async def janitor(client: Any) -> None:
            await client.execute_workflow(
                "Janitor",
                JanitorInput(regions=["us-east-1"]),
                id=janitor_id,
                task_queue=TASK_QUEUE,
                result_type=JanitorOutput,
            )

        wb.temporal(janitor)
        started[janitor_id] = "Janitor"
    finally:
        for name in (snap_name, arc_name):
            wb.cli("policy", "delete", name, check=False)
    return started


def _archive_result(wb: Workbench, rp: str, repo: str, to: str) -> tuple[str, dict[str, Any]]:
    return _cli_result(wb, "archive", rp, "--repo", repo, "--to", to)


def _histories(wb: Workbench, ids: list[str]) -> list[WorkflowHistory]:
    async def go(client: Any) -> list[WorkflowHistory]:
        return [await client.get_workflow_handle(wid).fetch_history() for wid in ids]

    return list(wb.temporal(go))


def _workflow_type(history: WorkflowHistory) -> str:
    first = history.events[0]
    return str(first.workflow_execution_started_event_attributes.workflow_type.name)


async def _replay(histories: list[WorkflowHistory]) -> tuple[int, dict[str, str]]:
    """Replay every history; (how many were replayed, workflow id -> failure)."""
    replayer = Replayer(workflows=WORKFLOWS, data_converter=payloads.data_converter())
    replayed = 0
    failures: dict[str, str] = {}

    async def each() -> Any:
        for h in histories:
            yield h

    async with replayer.workflow_replay_iterator(each()) as results:
        async for result in results:
            replayed += 1
            if result.replay_failure is not None:
                failure = result.replay_failure
                failures[result.history.workflow_id] = f"{type(failure).__name__}: {failure}"
    # The same histories through replay_workflows (what a CI job would call) must agree.
    summary = await replayer.replay_workflows(each(), raise_on_replay_failure=False)
    by_run = {h.run_id: h.workflow_id for h in histories}
    for run_id, failure in summary.replay_failures.items():
        failures.setdefault(by_run.get(run_id, run_id), f"{type(failure).__name__}: {failure}")
    return replayed, failures


def test_histories_of_real_runs_replay(wb: Workbench, tmp_path: Path) -> None:
    t0 = time.monotonic()
    started = _produce(wb, tmp_path)
    produced = time.monotonic() - t0
    histories = _histories(wb, list(started))
    assert len(histories) == len(started)
    for h in histories:  # every run is complete: the whole workflow is replayed
        assert h.events, h.workflow_id
        last = h.events[-1].event_type
        assert last == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED, (
            f"{h.workflow_id} ({started[h.workflow_id]}) ended with {EventType.Name(last)}"
        )
    types = Counter(_workflow_type(h) for h in histories)
    save_dir = os.environ.get("EC2BACKUP_REPLAY_SAVE_DIR")
    if save_dir:  # candidate fixtures for cross-version replay (see the module docstring)
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        for h in histories:
            name = f"{_workflow_type(h)}-{h.workflow_id}.json"  # the id is needed to replay
            (Path(save_dir) / name).write_text(h.to_json())
    assert set(types) == {
        "BackupSession", "BackupPolicy", "Retention", "Archive", "ArchivePolicy", "Restore",
        "Janitor",
    }, types  # fmt: skip

    t1 = time.monotonic()
    replayed, failures = asyncio.run(_replay(histories))
    print(
        f"produced {len(histories)} histories in {produced:.1f}s "
        f"({sum(len(h.events) for h in histories)} events; {dict(types)}); "
        f"replayed in {time.monotonic() - t1:.1f}s"
    )
    for h in histories:
        print(f"  {started[h.workflow_id]}: {h.workflow_id}, {len(h.events)} events")
    assert replayed == len(started), f"replayed {replayed} of {len(started)} histories"
    assert not failures, "replay failures (non-determinism):\n" + "\n".join(
        f"- {started.get(wid, '?')} {wid}: {msg}" for wid, msg in failures.items()
    )

"""A policy over 50 instances (issue 5): the run completes with the configured concurrency, its
result lists all 50, and the parent's history stays far inside Temporal's limits."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from session_helpers import Workbench, wait_for

from ec2backup.models.policy import BackupPolicyOutput

INSTANCES = 50
CONCURRENCY = 5
# Temporal's hard limits: 51,200 events / 50 MiB per history; it warns from 10,240 events.
HISTORY_WARN_EVENTS = 10_240

POLICY = """\
name: {name}
concurrency: {concurrency}
selection:
  tags: {{fleet: {fleet}}}
  regions: [us-east-1]
schedule:
  cron: "0 4 * * *"
snapshots:
  retention: {{count: 2}}
"""


def test_fifty_instances(wb: Workbench, tmp_path: Path) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    seeded = wb.cli_json(
        "lab",
        "seed",
        "--instances",
        str(INSTANCES),
        "--size-gib",
        "1",
        "--fill",
        "0.002",
        "--tag",
        f"fleet={fleet}",
    )["instances"]
    expected = {i["instance_id"] for i in seeded}
    assert len(expected) == INSTANCES
    name = f"scale-{fleet}"
    path = tmp_path / "scale.yaml"
    path.write_text(POLICY.format(name=name, fleet=fleet, concurrency=CONCURRENCY))
    wb.cli("policy", "apply", str(path))
    wb.cli("policy", "run", name)

    run_id = wait_for(
        lambda: wb.workflow_ids("BackupPolicy", name) or None, 30, "the run to start", interval=0.5
    )[0]
    assert wb.wait_status(run_id, timeout=900) == "COMPLETED"

    async def result_and_history(client: Any) -> tuple[BackupPolicyOutput, int, int]:
        handle = client.get_workflow_handle(run_id, result_type=BackupPolicyOutput)
        out = await handle.result()
        history = await handle.fetch_history()
        return out, len(history.events), history.to_json().__len__()

    result, events, size = wb.temporal(result_and_history)
    outcomes = {o.instance_id: o for o in result.instances}
    assert set(outcomes) == expected
    failed = [o for o in result.instances if o.status != "completed"]
    assert not failed, failed[:3]
    print(f"policy run of {INSTANCES} instances: {events} history events, {size} bytes of JSON")
    assert events < HISTORY_WARN_EVENTS / 4, events
    assert result.retention is not None  # retention ran after the sessions

    # Concurrency: never more than CONCURRENCY sessions open at once, and that many were used.
    async def spans(client: Any) -> list[tuple[Any, Any]]:
        found = []
        async for wf in client.list_workflows(
            f"WorkflowType = 'BackupSession' AND PolicyName = '{name}'"
        ):
            found.append((wf.start_time, wf.close_time))
        return found

    def all_listed() -> list[tuple[Any, Any]] | None:
        found: list[tuple[Any, Any]] = wb.temporal(spans)
        return found if len(found) == INSTANCES else None

    listed = wait_for(
        all_listed,
        60,
        "all sessions to be listed",
        interval=1,
    )
    assert all(close is not None for _, close in listed)
    peak = max(sum(1 for s, c in listed if s <= start < c) for start, _ in listed)
    assert peak == CONCURRENCY, peak
    wb.cli("policy", "delete", name)

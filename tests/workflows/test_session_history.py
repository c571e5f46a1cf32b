"""History stays bounded: a session's event count does not grow with the data (acceptance 10).

This module's orchestrator runs with the product's default transfer range (8 GiB): a range is
one activity however much it moves, and checkpoints ride on heartbeats (no history events).
"""

from __future__ import annotations

from typing import Any

from session_helpers import Workbench

ORCHESTRATOR_ENV: dict[str, str | None] = {"EC2BACKUP_RANGE_BLOCKS": None}
SMALL_CONSTANT = 10


def history_events(wb: Workbench, session_id: str) -> list[int]:
    """Event counts of every run of the session (more than one after continue-as-new)."""

    async def go(client: Any) -> list[int]:
        counts = []
        async for wf in client.list_workflows(f"WorkflowId = '{session_id}'"):
            history = await client.get_workflow_handle(session_id, run_id=wf.run_id).fetch_history()
            counts.append(len(history.events))
        return counts

    return list(wb.temporal(go))


def test_history_does_not_grow_with_volume_size(wb: Workbench) -> None:
    # One data volume each (plus moto's 8 GiB root): 256 MiB of data vs a 4 GiB volume
    # holding 410 MiB.
    small = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.25", "--seed", "11")
    large = wb.seed("--volumes", "1", "--size-gib", "4", "--fill", "0.1", "--seed", "12")
    repo = wb.new_repo()
    counts = {}
    for name, inst in (("256 MiB", small), ("4 GiB", large)):
        session = wb.backup(inst["instance_id"], "--repo", repo)
        assert session.result is not None
        volume = session.volume(inst["volumes"][0]["volume_id"])
        counts[name] = history_events(wb, session.session_id)
        print(
            f"history of a session of a {name} volume ({volume['bytes_read']} bytes read): "
            f"{counts[name]} events"
        )
    assert len(counts["256 MiB"]) == len(counts["4 GiB"]) == 1
    assert sum(counts["4 GiB"]) <= sum(counts["256 MiB"]) + SMALL_CONSTANT

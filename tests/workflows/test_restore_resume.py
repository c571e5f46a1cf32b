"""A restore from a backup survives the loss of its worker without starting over (issue 18):
the agent checkpoints each volume's write durably (an fsync, then the point reached in its
heartbeat); when the worker is lost, the workflow keeps its volumes, attaches them to a new
worker and goes on from the last checkpoint. The restored volume is byte-exact, and only one
volume per restored device was ever created."""

from __future__ import annotations

import json
import time
from typing import Any

from session_helpers import Workbench, wait_for

# Checkpoint every 16 MiB (production: 256) so one shows up within a few pack reads.
ORCHESTRATOR_ENV: dict[str, str | None] = {
    "EC2BACKUP_PERFORMANCE__RESTORE_CHECKPOINT_MIB": "16",
}
DATA_DEVICE = "/dev/sdf"


def _checkpoint(wb: Workbench, restore_id: str) -> dict[str, Any] | None:
    """The checkpoint in the restore's pending write's last heartbeat, if any."""

    async def go(client: Any) -> dict[str, Any] | None:
        desc = await client.get_workflow_handle(restore_id).describe()
        for pending in desc.raw_description.pending_activities:
            if pending.activity_type.name != "agent_write_volume":
                continue
            if pending.heartbeat_details.payloads:
                details = await client.data_converter.decode(pending.heartbeat_details.payloads)
                checkpoint = details[0].get("checkpoint") if details else None
                if checkpoint and checkpoint["next_block"] > 0:
                    return dict(checkpoint)
        return None

    result: dict[str, Any] | None = wb.temporal(go)
    return result


def test_a_lost_restore_worker_is_replaced_and_the_write_resumes(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.25", "--seed", "31")
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    rp = session.result["restore_point_id"]
    source = next(
        s
        for s in wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])[
            "Snapshots"
        ]
        if s["VolumeId"] == inst["volumes"][0]["volume_id"]
    )
    creates = int(wb.metrics()["api_calls"].get("CreateVolume", 0))

    wb.cli("lab", "fault", "--throttle", "3", "--api", "GetObject")  # a write that takes a while
    try:
        proc = wb.cli("restore", "instance", rp, "--repo", repo, timeout=60)
        restore_id = proc.stdout.splitlines()[0].strip()
        checkpoint = wait_for(
            lambda: _checkpoint(wb, restore_id), 120, f"{restore_id} to checkpoint", interval=0.5
        )
        agents = list(wb.metrics()["agents"])
        assert len(agents) == 1, agents  # the restore's worker (the backup's is gone)
        print(f"checkpoint {checkpoint}; killing {agents[0]}")
        wb.cli("lab", "kill-instance", agents[0])
    finally:
        wb.cli("lab", "fault", "--clear")

    t0 = time.monotonic()
    result = wb.temporal(lambda c: c.get_workflow_handle(restore_id, result_type=dict).result())
    print(f"restore {restore_id} ended {time.monotonic() - t0:.1f}s after the kill: {result}")
    assert result["status"] == "completed" and result["workers_used"] == 2, result
    resumed = result["resumed_from_blocks"]
    assert resumed.get(DATA_DEVICE, 0) >= checkpoint["next_block"] > 0, result
    restored = {v["device"]: v["volume_id"] for v in result["volumes"]}
    assert wb.checksum(restored[DATA_DEVICE]) == wb.checksum(source["SnapshotId"])
    # One worker volume per restored device, attached to both workers in turn (written again
    # from the start, each would have been created twice).
    made = int(wb.metrics()["api_calls"].get("CreateVolume", 0)) - creates
    assert made == len(result["volumes"]), (made, json.dumps(result))


def test_a_slow_s3_does_not_make_a_live_worker_look_lost(wb: Workbench) -> None:
    """Pack reads throttled to 1 GetObject/s back off (botocore's standard retries) for longer
    than the heartbeat timeout (10 s here) between two runs of blocks written: the agent's
    liveness beats keep the worker, and the restore completes on it. (Before them, every
    worker was taken for lost in turn and the restore failed with WorkersLost.)"""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.03", "--seed", "32")
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    rp = session.result["restore_point_id"]
    wb.cli("lab", "fault", "--throttle", "1", "--api", "GetObject")
    try:
        t0 = time.monotonic()
        proc = wb.cli("restore", "instance", rp, "--repo", repo, timeout=60)
        restore_id = proc.stdout.splitlines()[0].strip()
        result = wb.temporal(lambda c: c.get_workflow_handle(restore_id, result_type=dict).result())
        throttled = wb.metrics()
    finally:
        wb.cli("lab", "fault", "--clear")
    print(f"restore under 1 GetObject/s: {time.monotonic() - t0:.1f}s, {result}")
    refused = int(throttled["throttled_calls"].get("GetObject", 0))
    print(f"GetObject calls refused by the throttle: {refused}")
    assert refused > 0
    assert result["status"] == "completed" and result["workers_used"] == 1, result

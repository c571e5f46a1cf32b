"""What a session reports of its volumes is what its restore point records, even when a range
attempt was lost after a checkpoint: its blocks are durable (the next attempt resumes after
them) but its result never came back, so a sum of the ranges' results would miss them.

The installation's GetSnapshotBlock budget paces the reads (about 190 blocks/s), so the worker
can be killed at a known point: past the first checkpoint of its first range, well before the
range ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from session_helpers import BLOCK, GIB, RANGE_BLOCKS, Workbench, wait_for

from worker_agent.transfer import CHECKPOINT_EVERY_BLOCKS, EBS_DIRECT_IN_FLIGHT

QUOTA = 200
ORCHESTRATOR_ENV: dict[str, str | None] = {
    "EC2BACKUP_PERFORMANCE__EBS_GET_BLOCK_RPS_ACCOUNT": str(QUOTA),
}
# Kill once the first range's reads are this far: its checkpoint at CHECKPOINT_EVERY_BLOCKS is
# written (reads run up to EBS_DIRECT_IN_FLIGHT ahead of it) and its end is still ~1 s away.
KILL_AT = CHECKPOINT_EVERY_BLOCKS + EBS_DIRECT_IN_FLIGHT + 64


def _served(wb: Workbench) -> int:
    return int(wb.metrics()["blocks_served"])


def test_a_worker_lost_after_a_checkpoint_still_counts(wb: Workbench, tmp_path: Path) -> None:
    assert KILL_AT < RANGE_BLOCKS - 64  # the kill lands inside the first range
    # Every block written: the first range's reads are its first RANGE_BLOCKS blocks.
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "1", "--seed", "77")
    volume_id = inst["volumes"][0]["volume_id"]
    written = wb.written_bytes(volume_id) // BLOCK
    assert written == GIB // BLOCK, written
    repo = wb.new_repo()
    base = _served(wb)
    sid = wb.start_backup(inst["instance_id"], "--repo", repo, "--read", "ebs-direct")

    def reading() -> Any:
        p = wb.progress(sid)
        return p.phase == "transferring" and p.worker_instance_id and p

    worker = wait_for(reading, 120, f"{sid} to transfer", interval=0.2).worker_instance_id
    wait_for(lambda: _served(wb) - base >= KILL_AT, 60, f"{KILL_AT} blocks read", interval=0.05)
    killed = wb.lab_call("POST", "kill-instance", {"instance_id": worker})
    at_kill = _served(wb) - base
    assert killed["agent_killed"] is True, killed
    assert at_kill < RANGE_BLOCKS, f"killed after {at_kill} blocks: past the first range"

    result = wb.session_result(sid, timeout=300)
    served = _served(wb) - base
    counted = next(v for v in result["volumes"] if v["volume_id"] == volume_id)
    point = wb.cli_json("repo", "ls", "--repo", repo, "--json")[0]
    stats = next(v["stats"] for v in point["volumes"] if v["name"] == volume_id)
    print(
        f"killed after {at_kill} blocks read; {served} read in all for {written} written; "
        f"session counted {counted}; restore point {stats}"
    )
    assert result["status"] == "completed" and result["workers_provisioned"] == 2, result
    # The next worker resumed after the lost attempt's checkpoint: it did not read the first
    # CHECKPOINT_EVERY_BLOCKS blocks again (re-read: what followed, and the reads in flight).
    resumed = written + at_kill - CHECKPOINT_EVERY_BLOCKS + EBS_DIRECT_IN_FLIGHT
    assert served <= resumed, (served, written, at_kill)
    # ... and those blocks count: every written block read once (a fresh repository).
    assert counted["blocks_read"] == stats["blocks_read"] == written, (counted, stats)
    assert counted["blocks_listed"] == stats["blocks_listed"] == written, (counted, stats)
    assert counted["bytes_read"] == stats["bytes_read"] == written * BLOCK, (counted, stats)
    assert counted["bytes_stored"] == stats["bytes_new_stored"] > 0, (counted, stats)
    snapshot_id = next(
        s["SnapshotId"]
        for s in wb.client("ec2").describe_snapshots(SnapshotIds=result["snapshot_ids"])[
            "Snapshots"
        ]
        if s["VolumeId"] == volume_id
    )
    wb.assert_restores(repo, point["id"], volume_id, snapshot_id, tmp_path / "counted.img")
    assert wb.leftovers(sid) == {}, wb.diagnose(sid)

"""Interrupting a transfer: cancel, a lost worker host, pause/resume, an orchestrator restart
and a terminated workflow swept by the Janitor (acceptance 5-9).

All run against one instance with a 4 GiB data volume holding 1 GiB (several 256 MiB ranges);
each session writes to a fresh repository, so each reads every written block again.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from session_helpers import ACCOUNT_A, RANGE_BYTES, REGION, Workbench, wait_for

from ec2backup.budget import LIST_SNAPSHOT_BLOCKS, budget_id
from ec2backup.models.budget import BudgetState, BudgetStateInput
from ec2backup.snapshots import set_id_for

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def big(wb: Workbench) -> dict[str, Any]:
    inst = wb.seed("--volumes", "1", "--size-gib", "4", "--fill", "0.25", "--seed", "5")
    volume_id = inst["volumes"][0]["volume_id"]
    inst["data_bytes"] = wb.written_bytes(volume_id)
    print(f"big instance {inst['instance_id']}: {inst['data_bytes']} bytes written")
    return inst


def snapshot_of(wb: Workbench, result: dict[str, Any], volume_id: str) -> str:
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=result["snapshot_ids"])
    return next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume_id)


def test_cancel_during_transfer(wb: Workbench, big: dict[str, Any]) -> None:
    repo = wb.new_repo()
    sid = wb.start_backup(big["instance_id"], "--repo", repo)
    progress = wb.wait_transferring(sid, min_bytes=32 * MIB)
    assert progress.worker_instance_id
    by_device = {v.device: v for v in progress.volumes}
    assert set(by_device) == {"/dev/sda1", "/dev/sdf"}
    data = by_device["/dev/sdf"]
    assert data.volume_id == big["volumes"][0]["volume_id"]
    assert data.blocks_total == 4 * 1024**3 // (512 * 1024)
    assert 0 <= data.blocks_done < data.blocks_total
    t0 = time.monotonic()
    wb.cli("session", "cancel", sid)
    status = wb.wait_status(sid, timeout=90)
    print(f"cancel -> {status} in {time.monotonic() - t0:.1f}s")
    assert status == "CANCELED", wb.diagnose(sid)
    assert wb.leftovers(sid) == {}, wb.diagnose(sid)
    # Its checkpoints are gone with it: nothing pins the uncommitted session's data.
    bucket, _, prefix = repo.removeprefix("s3://").partition("/")
    listed = wb.client("s3").list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/")
    assert listed.get("KeyCount", 0) == 0, listed.get("Contents")
    workers = wb.session_instances(sid)
    assert [w["InstanceId"] for w in workers] == [progress.worker_instance_id]
    # The snapshot set stays, complete, and is listed.
    listing = wb.cli_json("snapshots", "list", "--instance", big["instance_id"], "--json")
    entries = [rp for rp in listing["restore_points"] if rp["session_id"] == sid]
    assert len(entries) == 1, listing
    assert entries[0]["set_id"] == set_id_for(sid)
    assert entries[0]["complete"] is True
    for snap in entries[0]["snapshots"]:
        assert snap["state"] == "completed"
    shown = wb.cli_json("session", "show", sid, "--json")
    assert shown["status"] == "CANCELED"


def test_lost_worker_is_replaced_and_resumes(
    wb: Workbench, big: dict[str, Any], tmp_path: Path
) -> None:
    repo = wb.new_repo()
    before = wb.agent_bytes()
    sid = wb.start_backup(big["instance_id"], "--repo", repo)
    progress = wb.wait_transferring(sid, min_bytes=300 * MIB)
    first_worker = progress.worker_instance_id
    killed = wb.cli_json("lab", "kill-instance", first_worker)
    assert killed["agent_killed"] is True
    t0 = time.monotonic()
    result = wb.session_result(sid, timeout=240)
    read = wb.agent_bytes() - before
    print(
        f"lost worker: session completed {time.monotonic() - t0:.1f}s after the kill; agents "
        f"read {read} bytes for {big['data_bytes']} bytes of data (range {RANGE_BYTES})"
    )
    assert result["status"] == "completed"
    assert result["workers_provisioned"] == 2, result
    # (the killed agent's last half second of reads may be missing from the lab's count)
    assert read <= big["data_bytes"] + RANGE_BYTES
    workers = {w["InstanceId"]: w["State"]["Name"] for w in wb.session_instances(sid)}
    assert len(workers) == 2 and first_worker in workers, workers
    assert wb.leftovers(sid) == {}, wb.diagnose(sid)
    volume_id = big["volumes"][0]["volume_id"]
    wb.assert_restores(
        repo,
        result["restore_point_id"],
        volume_id,
        snapshot_of(wb, result, volume_id),
        tmp_path / "lost.img",
    )


def test_pause_stops_reading_and_resume_completes(wb: Workbench, big: dict[str, Any]) -> None:
    repo = wb.new_repo()
    before = wb.agent_bytes()
    sid = wb.start_backup(big["instance_id"], "--repo", repo)
    wb.wait_transferring(sid, min_bytes=64 * MIB)
    at_pause = wb.agent_bytes()
    wb.cli("session", "pause", sid)
    t0 = time.monotonic()
    paused = wait_for(
        lambda: (p := wb.progress(sid)).paused and p.phase == "paused" and p,
        60,
        "phase 'paused'",
    )
    print(f"paused after {time.monotonic() - t0:.1f}s")
    assert paused.worker_instance_id
    stopped = wb.agent_bytes()
    time.sleep(4)
    assert wb.agent_bytes() == stopped, "the agent kept reading while paused"
    assert stopped - at_pause <= RANGE_BYTES
    shown = wb.cli_json("session", "show", sid, "--json")
    assert shown["status"] == "RUNNING"
    assert shown["progress"]["paused"] is True
    # The worker waits for resume (or cancel).
    assert wb.leftovers(sid).get("instances") == [(paused.worker_instance_id, "running")]
    wb.cli("session", "resume", sid)
    result = wb.session_result(sid, timeout=180)
    assert result["status"] == "completed"
    assert result["workers_provisioned"] == 1
    read = wb.agent_bytes() - before
    print(f"pause/resume: agents read {read} bytes for {big['data_bytes']} bytes of data")
    assert big["data_bytes"] <= read <= big["data_bytes"] + RANGE_BYTES
    assert wb.leftovers(sid) == {}


# A long fault run for `make faults`; its short form in `make test`:
# test_restore::test_crash_between_image_registration_and_launch_leaves_nothing.
@pytest.mark.fault
def test_orchestrator_restart_mid_session(wb: Workbench, big: dict[str, Any]) -> None:
    repo = wb.new_repo()
    sid = wb.start_backup(big["instance_id"], "--repo", repo)
    wb.wait_transferring(sid, min_bytes=64 * MIB)
    wb.orchestrator.stop(kill=True)
    try:
        time.sleep(3)
    finally:
        wb.orchestrator.start()
    result = wb.session_result(sid, timeout=180)
    assert result["status"] == "completed", wb.diagnose(sid)
    assert result["restore_point_id"]
    assert wb.leftovers(sid) == {}


def test_terminated_session_is_swept_by_janitor(wb: Workbench, big: dict[str, Any]) -> None:
    repo = wb.new_repo()
    # Attached copies: the sweep must find the worker's volumes too.
    sid = wb.start_backup(big["instance_id"], "--repo", repo, "--read", "attached")
    wb.wait_transferring(sid, min_bytes=32 * MIB)
    bucket, _, prefix = repo.removeprefix("s3://").partition("/")
    s3 = wb.client("s3")

    def checkpoints() -> list[str]:
        listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/checkpoints/")
        return [o["Key"] for o in listed.get("Contents", [])]

    wait_for(lambda: bool(checkpoints()), 60, "a checkpoint of the running session")

    async def terminate(client: Any) -> None:
        await client.get_workflow_handle(sid).terminate(reason="test: terminate mid-transfer")

    wb.temporal(terminate)
    assert wb.status(sid) == "TERMINATED"
    left = wb.leftovers(sid)
    assert left.get("instances") and left.get("volumes") and left.get("secret"), left
    # a terminated session runs no release: its checkpoints stay and pin their data ...
    time.sleep(2)  # an agent range may still write one more before its heartbeat times out
    assert checkpoints()
    # ... and its share of the account's list budget (taken for its plan and ranges) stays
    # held until the lease runs out, shrinking every other session's share ...
    list_budget = budget_id(ACCOUNT_A, REGION, LIST_SNAPSHOT_BLOCKS)

    async def holders(client: Any) -> set[str]:
        handle = client.get_workflow_handle(list_budget)
        state = await handle.query("state", BudgetStateInput(), result_type=BudgetState)
        return set(state.shares)

    assert sid in wb.temporal(holders)

    async def janitor(client: Any) -> Any:
        return await client.execute_workflow(
            "Janitor",
            {"regions": ["us-east-1"], "role_arns": [None]},
            id=f"janitor-test-{uuid.uuid4().hex[:8]}",
            task_queue="ec2backup",
            result_type=dict,
        )

    out = wb.temporal(janitor)
    print(f"janitor: {out}")
    assert wb.leftovers(sid) == {}, (out, wb.diagnose(sid))
    # ... until the Janitor removes them (the repository is one the installation remembers)
    assert out["checkpoints_deleted"] >= 1 and out["repositories_swept"] >= 1, out
    assert not checkpoints(), out
    # ... and gives the budget shares back.
    assert out["budget_shares_released"] >= 1 and sid not in wb.temporal(holders), out


def test_cancel_while_provisioning_leaves_nothing(wb: Workbench, big: dict[str, Any]) -> None:
    repo = wb.new_repo()
    # CreateVolume answers RequestLimitExceeded 3 times (boto3 backs off and retries, a few
    # seconds): the cancel lands while the provisioning activity is still at work.
    creates = int(wb.metrics()["api_calls"].get("CreateVolume", 0))
    wb.cli(
        "lab", "fault", "--api", "CreateVolume", "--error", "RequestLimitExceeded", "--times", "3"
    )
    try:
        sid = wb.start_backup(big["instance_id"], "--repo", repo)
        wait_for(
            lambda: wb.progress(sid).phase == "provisioning worker",
            60,
            "phase 'provisioning worker'",
            interval=0.1,
        )
        time.sleep(0.3)
        wb.cli("session", "cancel", sid)
        assert wb.wait_status(sid, timeout=60) == "CANCELED"
        # Let the provisioning activity get its volume through (or give up), then look.
        with contextlib.suppress(AssertionError):
            wait_for(
                lambda: int(wb.metrics()["api_calls"].get("CreateVolume", 0)) >= creates + 4,
                30,
                "the retried CreateVolume",
            )
        time.sleep(2)
        left = wb.leftovers(sid)
        assert left == {}, f"after the cancel the session left {left}"
    finally:
        wb.cli("lab", "fault", "--clear")

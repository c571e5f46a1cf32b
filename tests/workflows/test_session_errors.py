"""AWS errors: transient ones (throttling) are ridden out, permanent ones fail the session at
once with a message naming the cause (acceptance 11)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from session_helpers import Workbench


def api_calls(wb: Workbench, api: str) -> int:
    return int(wb.metrics()["api_calls"].get(api, 0))


def test_throttling_is_survived(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    injected = {
        "CreateSnapshots": "RequestLimitExceeded",  # EC2 throttling, retried inside boto3
        "ListSnapshotBlocks": "RequestThrottledException",  # EBS direct, from the agent
        "RunInstances": "RequestLimitExceeded",
        "PutObject": "SlowDown",  # S3, from the agent's repository writes
    }
    before = {api: api_calls(wb, api) for api in injected}
    for api, code in injected.items():
        wb.cli("lab", "fault", "--api", api, "--error", code, "--times", "2")
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    for api in injected:
        # both injected failures were answered, then the call went through
        assert api_calls(wb, api) - before[api] >= 3, api
    volume = session.volume(inst["volumes"][0]["volume_id"])
    assert volume["blocks_read"] > 0
    assert session.result["restore_point_id"]
    # CreateSnapshots was retried, yet made one set: one snapshot per volume (root + data).
    snaps = wb.client("ec2").describe_snapshots(
        Filters=[{"Name": "tag:ec2backup:session", "Values": [session.session_id]}]
    )["Snapshots"]
    assert sorted(s["SnapshotId"] for s in snaps) == sorted(session.result["snapshot_ids"])
    assert len(snaps) == 2


def test_unknown_instance_fails_fast(wb: Workbench) -> None:
    t0 = time.monotonic()
    session = wb.backup("i-0000000000000dead", check=False)
    elapsed = time.monotonic() - t0
    print(f"unknown instance: exit {session.returncode} after {elapsed:.1f}s: {session.stderr}")
    assert session.returncode != 0
    assert elapsed < 30
    assert "i-0000000000000dead" in session.stderr
    assert "does not exist" in session.stderr
    assert wb.status(session.session_id) == "FAILED"
    shown = wb.cli_json("session", "show", session.session_id, "--json")
    assert "i-0000000000000dead" in shown["error"]


def test_cli_exits_cleanly(wb: Workbench) -> None:
    """Commands that used a Temporal client exit with their own code, not a crash at
    interpreter exit (SIGABRT 'PyGILState_Release' / SIGSEGV, temporalio/sdk-python#300)."""
    codes = []
    for _ in range(10):
        proc = wb.cli("session", "list", "--json", "--limit", "1", check=False)
        codes.append(proc.returncode)
    assert codes == [0] * 10, f"exit codes of 10 x `session list`: {codes}"


def test_permanent_agent_error_fails_and_cleans_up(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    wb.cli("lab", "fault", "--api", "ListSnapshotBlocks", "--error", "AccessDeniedException")
    t0 = time.monotonic()
    session = wb.backup(inst["instance_id"], "--repo", repo, check=False)
    print(f"permanent error: exit {session.returncode} after {time.monotonic() - t0:.1f}s")
    assert session.returncode != 0
    assert wb.status(session.session_id) == "FAILED"
    assert "AccessDenied" in session.stderr, session.stderr
    assert wb.leftovers(session.session_id) == {}, wb.diagnose(session)


# "swap" is a long fault run for `make faults`; "shrink" is its short form in `make test`.
@pytest.mark.parametrize("change", ["shrink", pytest.param("swap", marks=pytest.mark.fault)])
def test_a_device_changed_under_a_running_range_fails_naming_the_volume(
    wb: Workbench, change: str
) -> None:
    """The worker's copy of the volume shrinks, or another volume takes its NVMe device, while
    the agent reads it (pack uploads slowed to 2/s so the range is still running): the range
    fails with the volume's id, no restore point is committed, and the session cleans up."""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.2", "--seed", "71")
    other = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05", "--seed", "72")
    repo = wb.new_repo()
    wb.cli("lab", "fault", "--throttle", "2", "--api", "PutObject")
    try:
        # Read from the worker's copy of the volume (what changes under the agent).
        session_id = wb.start_backup(inst["instance_id"], "--repo", repo, "--read", "attached")
        wb.wait_transferring(session_id, min_bytes=4 * 1024**2)
        data_volume = inst["volumes"][0]["volume_id"]
        copies = [
            v
            for v in wb.session_volumes(session_id)
            if {"Key": "ec2backup:source-volume", "Value": data_volume} in v.get("Tags", [])
        ]
        assert len(copies) == 1, wb.session_volumes(session_id)
        copy = copies[0]["VolumeId"]
        if change == "shrink":
            path = wb.lab_call("GET", f"volumes/{copy}")["path"]
            os.truncate(path, 64 * 1024**2)  # the device loses most of itself
        else:  # the NVMe device the copy's by-id link names now is another volume
            worker = copies[0]["Attachments"][0]["InstanceId"]
            devices = wb.lab_call("GET", f"instances/{worker}/devices")["devices"]
            by_id = Path(next(d["by_id"] for d in devices.values() if d["volume_id"] == copy))
            nvme = by_id.parent / os.readlink(by_id)
            foreign = wb.lab_call("GET", f"volumes/{other['volumes'][0]['volume_id']}")["path"]
            swapped = nvme.with_name(nvme.name + ".swap")
            swapped.symlink_to(foreign)
            os.replace(swapped, nvme)
        status = wb.wait_status(session_id, timeout=120)
    finally:
        wb.cli("lab", "fault", "--clear")
    assert status == "FAILED", wb.diagnose(session_id)
    message = failure(wb, session_id)
    # Whichever check sees it first: a read, the checkpoint's verification, or the next range.
    reasons = ("short read", "size changed", "but its snapshot is", "changed under", "leads to")
    assert copy in message and any(r in message for r in reasons), message
    assert not wb.cli_json("repo", "ls", "--repo", repo, "--json")
    assert wb.leftovers(session_id) == {}, wb.diagnose(session_id)


def failure(wb: Workbench, workflow_id: str) -> str:
    """The failed workflow's own error message (the first application error of the chain)."""
    from temporalio.client import WorkflowFailureError

    from ec2backup.views import failure_message

    async def go(client: Any) -> str:
        try:
            await client.get_workflow_handle(workflow_id).result()
        except WorkflowFailureError as exc:
            return failure_message(exc)
        raise AssertionError(f"{workflow_id} did not fail")

    return str(wb.temporal(go))

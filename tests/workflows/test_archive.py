"""The archive tier end to end (issue 7): `ec2backup archive` runs the `Archive` workflow on a
worker instance in the lab, the archived packs are in GLACIER (a plain read is refused),
archiving again stores nothing, deleting the hot restore point leaves the archive intact, and
`restore volume --source archive` waits for the retrieval (durable timers) and restores the
source bytes. The worker is removed on success, failure and cancel."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest
from botocore.exceptions import ClientError
from session_helpers import BUCKET, Workbench, wait_for


def _archive(
    wb: Workbench, *args: str, check: bool = True
) -> tuple[str, dict[str, Any] | None, Any]:
    proc = wb.cli("archive", *args, "--wait", check=check, timeout=400)
    lines = proc.stdout.splitlines()
    result = json.loads("\n".join(lines[1:])) if proc.returncode == 0 and len(lines) > 1 else None
    return (lines[0].strip() if lines else ""), result, proc


def _instances_of(wb: Workbench, session_id: str) -> list[dict[str, Any]]:
    reservations = wb.client("ec2").describe_instances(
        Filters=[{"Name": "tag:ec2backup:session", "Values": [session_id]}]
    )["Reservations"]
    return [i for r in reservations for i in r["Instances"]]


def _assert_worker_removed(wb: Workbench, archive_id: str, launched: bool = True) -> None:
    instances = _instances_of(wb, archive_id)
    if launched:
        assert instances, f"no worker was launched for {archive_id}"
    states = {i["InstanceId"]: i["State"]["Name"] for i in instances}
    assert all(s in ("terminated", "shutting-down") for s in states.values()), states
    secrets = wb.client("secretsmanager").list_secrets()["SecretList"]
    assert not [s for s in secrets if archive_id in s["Name"]]


def _packs(wb: Workbench, url: str) -> dict[str, str]:
    prefix = url.removeprefix(f"s3://{BUCKET}/") + "/data/"
    s3 = wb.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = obj.get("StorageClass", "STANDARD")
    return out


@pytest.fixture(scope="module")
def hot(wb: Workbench) -> dict[str, Any]:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05")
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    volume = inst["volumes"][0]["volume_id"]
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
    snap = next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume)
    return {
        "instance": inst,
        "volume": volume,
        "repo": repo,
        "rp": session.result["restore_point_id"],
        "sha": wb.checksum(snap),
        "archive": f"s3://{BUCKET}/{wb.name}-archive-{uuid.uuid4().hex[:6]}",
    }


def test_archive_then_restore_from_archive(wb: Workbench, hot: dict[str, Any]) -> None:
    archive_id, result, _ = _archive(
        wb, hot["rp"], "--repo", hot["repo"], "--to", hot["archive"], "--storage-class", "GLACIER"
    )
    assert result is not None and result["status"] == "completed", result
    assert result["restore_point_id"] == hot["rp"] and not result["already_archived"]
    verify = result["verify"]
    assert verify["problems"] == [] and verify["storage_classes"] == {"GLACIER": verify["packs"]}
    print(
        f"archived {verify['allocated_bytes']} bytes in {verify['packs']} packs + "
        f"{verify['metadata_objects']} metadata objects: {verify['objects_per_gib']} objects/GiB"
    )
    assert verify["objects_per_gib"] > 0
    _assert_worker_removed(wb, archive_id)

    # Every pack is GLACIER and a plain read is refused.
    packs = _packs(wb, hot["archive"])
    assert packs and set(packs.values()) == {"GLACIER"}
    with pytest.raises(ClientError) as refused:
        wb.client("s3").get_object(Bucket=BUCKET, Key=next(iter(packs)))
    assert refused.value.response["Error"]["Code"] == "InvalidObjectState"

    # Archiving again stores nothing and starts no worker.
    again_id, again, _ = _archive(wb, hot["rp"], "--repo", hot["repo"], "--to", hot["archive"])
    assert again is not None and again["status"] == "already archived"
    assert again["archive_restore_point_id"] == result["archive_restore_point_id"]
    assert _packs(wb, hot["archive"]) == packs
    assert _instances_of(wb, again_id) == []

    # Deleting the hot restore point (forget + prune) does not affect the archived one.
    wb.cli("repo", "forget", hot["rp"], "--repo", hot["repo"])
    wb.cli("repo", "prune", "--repo", hot["repo"])
    assert _packs(wb, hot["archive"]) == packs

    # Restore from the archive: waits for the retrieval, then the bytes of the source.
    proc = wb.cli(
        "restore", "volume", hot["rp"], "--source", "archive", "--repo", hot["archive"],
        "--volume-id", hot["volume"], "--retrieval-tier", "Bulk",
        "--retrieval-poll-seconds", "0.5", "--wait", timeout=400,
    )  # fmt: skip
    restored = json.loads("\n".join(proc.stdout.splitlines()[1:]))
    assert restored["status"] == "completed" and restored["source"] == "archive"
    assert restored["retrieval_seconds"] and restored["retrieval_seconds"] >= 0.5
    assert any("archived in GLACIER" in c for c in restored["checks"])
    new_volume = restored["volumes"][0]["volume_id"]
    assert wb.checksum(new_volume) == hot["sha"]


def test_worker_removed_on_failure_and_cancel(wb: Workbench, hot: dict[str, Any]) -> None:
    inst = hot["instance"]
    wb.cli("lab", "churn", hot["volume"], "--fraction", "0.02", "--seed", "5")
    second = wb.backup(inst["instance_id"], "--repo", hot["repo"])
    assert second.result is not None
    rp2 = second.result["restore_point_id"]
    target = f"s3://{BUCKET}/{wb.name}-archive-fail-{uuid.uuid4().hex[:6]}"

    # Failure: the worker cannot write to S3 (an injected AccessDenied on every PutObject).
    # The archive repository exists already, so planning writes nothing to S3 and a worker
    # is launched; its copy fails.
    wb.cli("repo", "init", "--repo", target, "--storage-class", "GLACIER")
    wb.cli("lab", "fault", "--api", "PutObject", "--error", "AccessDenied", "--times", "1000")
    try:
        archive_id, result, proc = _archive(
            wb, rp2, "--repo", hot["repo"], "--to", target, check=False
        )
    finally:
        wb.cli("lab", "fault", "--clear")
    assert proc.returncode != 0 and result is None
    assert "AccessDenied" in proc.stderr or "Access Denied" in proc.stderr, proc.stderr
    assert wb.wait_status(archive_id, timeout=60) == "FAILED"
    _assert_worker_removed(wb, archive_id, launched=True)

    # Cancel: as soon as a worker is being provisioned or copying.
    started = wb.cli("archive", rp2, "--repo", hot["repo"], "--to", target)
    archive_id = started.stdout.splitlines()[0].strip()

    async def phase(client: Any) -> str:
        return str(await client.get_workflow_handle(archive_id).query("phase", result_type=str))

    wait_for(
        lambda: wb.temporal(phase) in ("provisioning worker", "copying") or None,
        60,
        "the archive to provision its worker",
        interval=0.05,
    )

    async def cancel(client: Any) -> None:
        await client.get_workflow_handle(archive_id).cancel()

    wb.temporal(cancel)
    status = wb.wait_status(archive_id, timeout=120)
    if status == "COMPLETED":  # the copy won the race: nothing to judge about cancel
        pytest.skip("the archive finished before the cancel arrived")
    assert status == "CANCELED"
    time.sleep(0.5)
    _assert_worker_removed(wb, archive_id, launched=False)


# A long fault run for `make faults`; its short form in `make test`:
# test_session_interrupt::test_lost_worker_is_replaced_and_resumes.
@pytest.mark.fault
def test_lost_archive_worker_resumes_from_checkpoint(wb: Workbench) -> None:
    """The worker dies mid-copy: the Archive workflow notices (heartbeat timeout), provisions
    another, which resumes from the archive's checkpoint; the result restores exactly."""
    inst = wb.seed("--volumes", "1", "--size-gib", "2", "--fill", "0.3", "--seed", "9")
    volume = inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    rp = session.result["restore_point_id"]
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
    snap = next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume)
    target = f"s3://{BUCKET}/{wb.name}-archive-lost-{uuid.uuid4().hex[:6]}"
    archive_id = wb.cli("archive", rp, "--repo", repo, "--to", target).stdout.split()[0]

    s3 = wb.client("s3")
    checkpoints = target.removeprefix(f"s3://{BUCKET}/") + "/checkpoints/"
    # Two checkpoints: the (empty) root volume's final one and the data volume's first.
    wait_for(
        lambda: (
            s3.list_objects_v2(Bucket=BUCKET, Prefix=checkpoints).get("KeyCount", 0) >= 2 or None
        ),
        120,
        "the data volume's first checkpoint",
        interval=0.2,
    )
    running = [i for i in _instances_of(wb, archive_id) if i["State"]["Name"] == "running"]
    assert len(running) == 1
    assert wb.cli_json("lab", "kill-instance", running[0]["InstanceId"])["agent_killed"]

    from ec2backup.models.archive import ArchiveOutput

    async def result(client: Any) -> ArchiveOutput:
        handle = client.get_workflow_handle(archive_id, result_type=ArchiveOutput)
        out: ArchiveOutput = await handle.result()
        return out

    out = wb.temporal(result)
    print(
        f"lost archive worker: {out.workers_provisioned} workers, {out.blocks_resumed} blocks "
        f"resumed from checkpoints, {out.bytes_copied} bytes copied by the last one"
    )
    assert out.status == "completed" and out.workers_provisioned == 2
    assert out.blocks_resumed > 0
    assert out.verify is not None and out.verify.problems == []
    _assert_worker_removed(wb, archive_id)

    proc = wb.cli(
        "restore", "volume", rp, "--source", "archive", "--repo", target, "--volume-id", volume,
        "--retrieval-poll-seconds", "0.5", "--wait", timeout=400,
    )  # fmt: skip
    restored = json.loads("\n".join(proc.stdout.splitlines()[1:]))
    assert wb.checksum(restored["volumes"][0]["volume_id"]) == wb.checksum(snap)

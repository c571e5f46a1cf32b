"""A full session of a 2-volume instance, its encrypted tags, its restore point, and the
incremental session after churn (acceptance 1 and 2)."""

from __future__ import annotations

import base64
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from session_helpers import ACCOUNT_A, Session, Workbench

from ec2backup import tagcodec
from ec2backup.snapshots import set_id_for


@pytest.fixture(scope="module")
def full(wb: Workbench) -> dict[str, Any]:
    """Seed a 2-volume instance, run one session with an image-level backup."""
    inst = wb.seed("--volumes", "2", "--size-gib", "1", "--fill", "0.05")
    repo = wb.new_repo()
    before = wb.agent_bytes()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    print(f"first session read {wb.agent_bytes() - before} bytes from worker volumes")
    return {"instance": inst, "repo": repo, "session": session}


def snapshot_tags(wb: Workbench, snapshot_ids: list[str]) -> dict[str, list[dict[str, str]]]:
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=snapshot_ids)["Snapshots"]
    return {s["SnapshotId"]: s.get("Tags", []) for s in snaps}


def installation_key(wb: Workbench) -> bytes:
    value = wb.client("secretsmanager").get_secret_value(SecretId="ec2backup/installation")
    return base64.b64decode(json.loads(value["SecretString"])["key"])


def test_full_session_result(full: dict[str, Any]) -> None:
    inst, session = full["instance"], full["session"]
    result = session.result
    assert result is not None
    assert result["snapshot_set_id"] == set_id_for(session.session_id)
    # moto's 8 GiB root volume plus the two data volumes
    assert len(result["snapshot_ids"]) == 3
    assert result["restore_point_id"]
    assert result["placement"] == "backup"
    assert result["workers_provisioned"] == 1
    assert result["replica_ids"] == []
    devices = {v["device"] for v in result["volumes"]}
    assert devices == {"/dev/sda1", "/dev/sdf", "/dev/sdg"}
    for vol in inst["volumes"]:
        counters = session.volume(vol["volume_id"])
        assert counters["blocks_read"] > 0
        assert counters["bytes_read"] == counters["blocks_read"] * 512 * 1024
        assert 0 < counters["bytes_stored"] <= counters["bytes_read"] * 1.05
        assert counters["cbt_used"] is False


def test_tags_unreadable_without_key(wb: Workbench, full: dict[str, Any]) -> None:
    session: Session = full["session"]
    inst = full["instance"]
    assert session.result is not None
    key = installation_key(wb)
    plain_fields = [
        inst["instance_id"],
        *(v["volume_id"] for v in inst["volumes"]),
        ACCOUNT_A,
        "/dev/sdf",
        "adhoc",
    ]
    tags = snapshot_tags(wb, session.result["snapshot_ids"])
    for snap_id, snap_tags in tags.items():
        payload = [t for t in snap_tags if t["Key"].startswith(tagcodec.PAYLOAD_PREFIX)]
        assert payload, f"{snap_id} has no payload tags: {snap_tags}"
        assert all(len(t["Value"]) <= 256 for t in snap_tags)
        # With the installation key it decodes; with any other key it does not.
        meta = tagcodec.decode(snap_tags, key, snap_id)
        assert meta.instance_id == inst["instance_id"]
        assert meta.session_id == session.session_id
        with pytest.raises(tagcodec.TagError):
            tagcodec.decode(snap_tags, os.urandom(32), snap_id)
        # The payload is ciphertext: no field of the metadata appears in it, even decoded.
        text = "".join(t["Value"] for t in payload)
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        for value in [*plain_fields, meta.volume_id]:
            assert value not in text
            assert value.encode() not in raw


def test_no_tag_value_reveals_metadata(wb: Workbench, full: dict[str, Any]) -> None:
    session: Session = full["session"]
    inst = full["instance"]
    assert session.result is not None
    plain_fields = [inst["instance_id"], *(v["volume_id"] for v in inst["volumes"])]
    tags = snapshot_tags(wb, session.result["snapshot_ids"])
    leaks = [
        (snap_id, t["Key"], t["Value"])
        for snap_id, snap_tags in tags.items()
        for t in snap_tags
        for value in plain_fields
        if value in t["Value"]
    ]
    assert not leaks, f"tag values reveal plain metadata: {leaks}"


def test_restore_point_restores_byte_exact(
    wb: Workbench, full: dict[str, Any], tmp_path: Path
) -> None:
    session: Session = full["session"]
    assert session.result is not None
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
    volume_of = {s["SnapshotId"]: s["VolumeId"] for s in snaps["Snapshots"]}
    data_volumes = {v["volume_id"] for v in full["instance"]["volumes"]}
    for snap_id in session.result["snapshot_ids"]:
        volume_id = volume_of[snap_id]
        out = tmp_path / f"{snap_id}.img"
        rp = session.result["restore_point_id"]
        if volume_id in data_volumes:
            wb.assert_restores(full["repo"], rp, volume_id, snap_id, out)
        else:  # moto's empty 8 GiB root volume
            wb.assert_restores_empty(full["repo"], rp, volume_id, snap_id, out)


def test_incremental_reads_only_changed_blocks(
    wb: Workbench, full: dict[str, Any], tmp_path: Path
) -> None:
    inst, repo = full["instance"], full["repo"]
    volume_id = inst["volumes"][0]["volume_id"]
    churn = wb.cli_json("lab", "churn", volume_id, "--fraction", "0.01")
    churned = int(churn["bytes"])
    read_before, stored_before = wb.agent_bytes(), wb.repo_stored_bytes(repo)
    session = wb.backup(inst["instance_id"], "--repo", repo)
    assert session.result is not None
    read = wb.agent_bytes() - read_before
    grown = wb.repo_stored_bytes(repo) - stored_before
    print(
        f"churned {churned} bytes ({len(churn['blocks'])} blocks); incremental read {read} "
        f"bytes, repository grew {grown} bytes"
    )
    for vol in session.result["volumes"]:
        assert vol["cbt_used"] is True, vol
        assert "changed blocks since" in vol["cbt_reason"]
    changed = session.volume(volume_id)
    assert changed["blocks_listed"] == len(churn["blocks"])
    other = session.volume(inst["volumes"][1]["volume_id"])
    assert other["blocks_read"] == 0
    assert read <= 1.1 * churned
    assert read >= 0.5 * churned  # it did read the changed blocks from the volume
    assert grown < 2 * churned
    # The incremental restore point restores the churned volume byte for byte.
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
    snap_id = next(s["SnapshotId"] for s in snaps["Snapshots"] if s["VolumeId"] == volume_id)
    wb.assert_restores(
        repo, session.result["restore_point_id"], volume_id, snap_id, tmp_path / "incr.img"
    )


def test_tampered_tag_is_rejected(wb: Workbench, full: dict[str, Any]) -> None:
    session: Session = full["session"]
    inst = full["instance"]
    assert session.result is not None
    set_id = session.result["snapshot_set_id"]
    victim = session.result["snapshot_ids"][1]
    ec2 = wb.client("ec2")
    tags = snapshot_tags(wb, [victim])[victim]
    original = tagcodec.tag_value(tags, "ec2backup:m0")
    assert original
    pos = len(original) // 2
    flipped = original[:pos] + ("A" if original[pos] != "A" else "B") + original[pos + 1 :]
    listing: dict[str, Any] = {}
    ec2.create_tags(Resources=[victim], Tags=[{"Key": "ec2backup:m0", "Value": flipped}])
    try:
        listing = wb.cli_json("snapshots", "list", "--instance", inst["instance_id"], "--json")
    finally:
        ec2.create_tags(Resources=[victim], Tags=[{"Key": "ec2backup:m0", "Value": original}])
    problems = {p["snapshot_id"]: p["problem"] for p in listing["problems"]}
    assert victim in problems, listing["problems"]
    assert "authentication" in problems[victim]
    for rp in listing["restore_points"]:
        if rp["set_id"] == set_id:
            assert rp["complete"] is False, rp
            assert victim not in {s["snapshot_id"] for s in rp["snapshots"]}
    # Restored, the set is listed complete again (the tamper, not the listing, was the issue).
    again = wb.cli_json("snapshots", "list", "--instance", inst["instance_id"], "--json")
    entry = next(rp for rp in again["restore_points"] if rp["set_id"] == set_id)
    assert entry["complete"] is True
    assert victim in {s["snapshot_id"] for s in entry["snapshots"]}


def test_a_volume_grown_before_its_snapshot_is_backed_up_at_the_snapshots_size(
    wb: Workbench, tmp_path: Path
) -> None:
    """The volume is grown from 1 to 2 GiB after the session described it and before its
    snapshot is taken (CreateSnapshots held back by throttling): the set records the
    snapshot's size, the worker reads the whole 2 GiB, and the backup restores exactly."""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02", "--seed", "81")
    volume_id = inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()
    calls = int(wb.metrics()["api_calls"].get("CreateSnapshots", 0))
    wb.cli("lab", "fault", "--throttle", "0.2", "--api", "CreateSnapshots")
    try:
        session_id = wb.start_backup(inst["instance_id"], "--repo", repo)
        deadline = time.monotonic() + 60
        while int(wb.metrics()["api_calls"].get("CreateSnapshots", 0)) <= calls:
            assert time.monotonic() < deadline, "CreateSnapshots was never tried"
            time.sleep(0.2)
        wb.client("ec2").modify_volume(VolumeId=volume_id, Size=2)
    finally:
        wb.cli("lab", "fault", "--clear")
    result = wb.session_result(session_id, timeout=300)
    assert result["status"] == "completed", result
    snaps = wb.client("ec2").describe_snapshots(SnapshotIds=result["snapshot_ids"])["Snapshots"]
    snap = next(s for s in snaps if s["VolumeId"] == volume_id)
    assert snap["VolumeSize"] == 2
    # The restored image is the snapshot's 2 GiB, byte for byte (a 1 GiB record would not be).
    wb.assert_restores(
        repo, result["restore_point_id"], volume_id, snap["SnapshotId"], tmp_path / "g.img"
    )

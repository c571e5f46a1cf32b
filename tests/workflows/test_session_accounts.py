"""Sessions across Regions and accounts: replication with the target's KMS key (acceptance 3)
and default-key volumes whose worker runs in the production account (acceptance 4)."""

from __future__ import annotations

import json
from pathlib import Path

from session_helpers import ACCOUNT_B, OTHER_REGION, ROLE_B, ROLE_TAG, SESSION_TAG, Workbench


def test_replication_to_other_region_and_account(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02", "--encryption", "cmk")
    target_kms = wb.client("kms", OTHER_REGION, ROLE_B)
    key_arn = target_kms.create_key(Description="ec2backup replica key")["KeyMetadata"]["Arn"]
    session = wb.backup(
        inst["instance_id"],
        "--replicate-to",
        OTHER_REGION,
        "--replicate-account",
        ROLE_B,
        "--replicate-kms-key",
        key_arn,
    )
    result = session.result
    assert result is not None
    assert result["restore_point_id"] is None  # snapshots only, no repository
    assert len(result["replica_ids"]) == len(result["snapshot_ids"]) == 2
    dst = wb.client("ec2", OTHER_REGION, ROLE_B)
    replicas = {
        s["SnapshotId"]: s
        for s in dst.describe_snapshots(SnapshotIds=result["replica_ids"])["Snapshots"]
    }
    assert set(replicas) == set(result["replica_ids"])
    for source_id, replica_id in zip(result["snapshot_ids"], result["replica_ids"], strict=True):
        replica = replicas[replica_id]
        assert replica["OwnerId"] == ACCOUNT_B
        assert replica["State"] == "completed"
        assert replica["Encrypted"] is True
        assert replica["KmsKeyId"] == key_arn
        tags = {t["Key"]: t["Value"] for t in replica.get("Tags", [])}
        assert tags.get(SESSION_TAG) == session.session_id
        assert tags.get("ec2backup:source-snapshot") == source_id
        assert "ec2backup:m0" in tags
    # A volume made from each copy in the target account/Region holds the source's bytes.
    zone = dst.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    data_snapshots = set(result["snapshot_ids"][1:])  # [0] is moto's empty root volume
    for source_id, replica_id in zip(result["snapshot_ids"], result["replica_ids"], strict=True):
        if source_id not in data_snapshots:
            continue
        volume_id = dst.create_volume(SnapshotId=replica_id, AvailabilityZone=zone)["VolumeId"]
        try:
            assert wb.checksum(volume_id) == wb.checksum(source_id), (source_id, replica_id)
        finally:
            dst.delete_volume(VolumeId=volume_id)
    # The copies are a restore point of their own in the target account/Region.
    listing = wb.cli_json(
        "snapshots", "list", "--region", OTHER_REGION, "--account-role-arn", ROLE_B, "--json"
    )
    entries = [rp for rp in listing["restore_points"] if rp["session_id"] == session.session_id]
    assert len(entries) == 1, listing
    entry = entries[0]
    assert entry["set_id"] == result["snapshot_set_id"]
    assert entry["replica"] is True
    assert entry["complete"] is True
    assert entry["account"] == ACCOUNT_B
    assert entry["region"] == OTHER_REGION
    assert entry["instance_id"] == inst["instance_id"]
    assert [s["snapshot_id"] for s in entry["snapshots"]] == result["replica_ids"]
    assert not [p for p in listing["problems"] if p["snapshot_id"] in replicas]


def test_default_key_volumes_back_up_in_production_account(wb: Workbench, tmp_path: Path) -> None:
    inst = wb.seed(
        "--account",
        ACCOUNT_B,
        "--encryption",
        "default-key",
        "--volumes",
        "1",
        "--size-gib",
        "1",
        "--fill",
        "0.02",
    )
    repo = wb.new_repo()
    session = wb.backup(
        inst["instance_id"],
        "--account-role-arn",
        ROLE_B,
        "--repo",
        repo,
        "--worker-placement",
        "auto",
    )
    result = session.result
    assert result is not None
    assert result["placement"] == "production", result
    assert "default" in result["placement_reason"], result["placement_reason"]
    assert result["workers_provisioned"] == 1
    # The worker ran (and was terminated) in the production account, none in the backup one.
    workers_b = wb.session_instances(session.session_id, role_arn=ROLE_B)
    assert workers_b, "no worker instance in account 222222222222"
    for worker in workers_b:
        tags = {t["Key"]: t["Value"] for t in worker.get("Tags", [])}
        assert tags.get(ROLE_TAG) == "worker"
        assert worker["State"]["Name"] == "terminated", worker["State"]
    assert wb.session_instances(session.session_id) == []
    assert wb.session_volumes(session.session_id, role_arn=ROLE_B) == []
    # Nothing was shared out of the production account and the backup restores exactly.
    src = wb.client("ec2", role_arn=ROLE_B)
    data_volume = inst["volumes"][0]["volume_id"]
    snaps = src.describe_snapshots(SnapshotIds=result["snapshot_ids"])["Snapshots"]
    snap = next(s for s in snaps if s["VolumeId"] == data_volume)
    assert snap["Encrypted"] is True
    perms = src.describe_snapshot_attribute(
        SnapshotId=snap["SnapshotId"], Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    assert perms == []
    wb.assert_restores(
        repo, result["restore_point_id"], data_volume, snap["SnapshotId"], tmp_path / "b.img"
    )


def test_cross_account_session_and_restore_outlive_their_role_sessions(wb: Workbench) -> None:
    """Role sessions of 15 s (what `lab up --role-session-seconds 15` sets, here at run time)
    and snapshots that stay pending 17 s: every wait holds its account's client longer than one
    role session. A cross-account backup session and a restore from its backup into that
    account both complete (botocore refreshes the credentials; ExpiredToken is not final)."""
    before = wb.lab_call("GET", "config")
    wb.lab_call("POST", "config", {"role_session_seconds": 15, "snapshot_pending_seconds": 17})
    try:
        inst = wb.seed(
            "--account", ACCOUNT_B, "--volumes", "1", "--size-gib", "1", "--fill", "0.02"
        )
        repo = wb.new_repo()
        session = wb.backup(inst["instance_id"], "--account-role-arn", ROLE_B, "--repo", repo)
        assert session.result is not None
        proc = wb.cli(
            "restore",
            "volume",
            session.result["restore_point_id"],
            "--repo",
            repo,
            "--device",
            "/dev/sdf",
            "--to-account",
            ROLE_B,
            "--wait",
            timeout=300,
        )
        result = json.loads("\n".join(proc.stdout.splitlines()[1:]))
        assert result["status"] == "completed" and result["source"] == "backup"
    finally:
        wb.lab_call(
            "POST",
            "config",
            {
                "role_session_seconds": before["role_session_seconds"],
                "snapshot_pending_seconds": before["snapshot_pending_seconds"],
            },
        )
    restored = result["volumes"][0]["volume_id"]
    source = session.result["snapshot_ids"][
        [v["device"] for v in session.result["volumes"]].index("/dev/sdf")
    ]
    assert wb.checksum(restored) == wb.checksum(source)

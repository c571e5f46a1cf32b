"""The lab's EC2/EBS model (issue section 2), driven through boto3 over HTTP and the lab CLI.

Covered: volumes are sparse files; CreateSnapshot(s) take a point-in-time block map;
CreateVolume(SnapshotId) materializes it; CopySnapshot across Regions and to accounts the
snapshot is shared with; KMS key ids following snapshots, volumes and copies; sharing an aws/ebs
snapshot is refused; the EBS direct APIs (block size, pagination, block tokens, checksums,
changed blocks, unrelated snapshots, missing blocks); pending -> completed; attach/detach
validation; DescribeSnapshots(OwnerIds=self) without foreign snapshots; several accounts and
Regions kept apart.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import (
    ACCOUNT_A,
    ACCOUNT_B,
    BLOCK,
    GIB,
    LAB_AMI,
    OTHER_REGION,
    ZONE,
    account_b_creds,
    changed_blocks,
    checksum,
    checksums,
    churn,
    client,
    control_get,
    error_of,
    get_block,
    list_blocks,
    restore,
    seed,
    seed_volume,
    share,
    snapshot,
    wait_completed,
)


def allocated_bytes(lab: Any, volume_id: str) -> tuple[int, int]:
    """(apparent size, bytes allocated on disk) of a volume's backing file."""
    info = control_get(lab, f"volumes/{volume_id}")
    st = os.stat(info["path"])
    return st.st_size, st.st_blocks * 512


def run_instance(ec2: Any, zone: str = ZONE) -> str:
    out = ec2.run_instances(
        ImageId=LAB_AMI, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
    )
    return str(out["Instances"][0]["InstanceId"])


def assert_ascending_unique(indexes: list[int]) -> None:
    assert indexes == sorted(set(indexes)), "indexes must be ascending without duplicates"


# -- volumes and snapshots ---------------------------------------------------------------------
def test_volume_is_a_sparse_file(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.03, seed_value=21)
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    blocks, _ = list_blocks(ebs, snapshot(ec2, volume_id))
    size, allocated = allocated_bytes(lab, volume_id)
    assert size == GIB
    # About `fill` of the volume is written, and only that is allocated on disk.
    assert 0.02 * GIB <= len(blocks) * BLOCK <= 0.04 * GIB
    assert 0.9 * len(blocks) * BLOCK <= allocated <= len(blocks) * BLOCK + 4 * BLOCK


def test_snapshot_is_point_in_time(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.03, seed_value=22)
    ec2 = client(lab, "ec2")
    before = checksum(lab, volume_id)
    snapshot_id = ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"]
    churn(lab, volume_id, 0.02, seed_value=3)  # written while the snapshot is still pending
    wait_completed(ec2, snapshot_id)
    snapshot_sum, volume_sum = checksums(lab, snapshot_id, volume_id)
    assert snapshot_sum == before  # `lab checksum`: a volume and its snapshot agree ...
    assert volume_sum != before  # ... and the volume's differs after churn


def test_create_snapshots_of_an_instance_is_point_in_time(lab: Any) -> None:
    out = seed(lab, volumes=2, fill=0.02, seed_value=23)
    instance = out["instances"][0]
    volume_ids = [v["volume_id"] for v in instance["volumes"]]
    before = dict(zip(volume_ids, checksums(lab, *volume_ids), strict=True))
    ec2 = client(lab, "ec2")
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": instance["instance_id"], "ExcludeBootVolume": True}
    )["Snapshots"]
    assert sorted(s["VolumeId"] for s in snaps) == sorted(volume_ids)
    for volume_id in volume_ids:
        churn(lab, volume_id, 0.02, seed_value=4)
    wait_completed(ec2, *(s["SnapshotId"] for s in snaps))
    after = checksums(lab, *(s["SnapshotId"] for s in snaps))
    assert after == [before[s["VolumeId"]] for s in snaps]


def test_create_volume_from_snapshot_materializes_it(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.03, seed_value=24)
    ec2 = client(lab, "ec2")
    snapshot_id = snapshot(ec2, volume_id)
    restored = restore(ec2, snapshot_id)
    vol = ec2.describe_volumes(VolumeIds=[restored])["Volumes"][0]
    assert (vol["SnapshotId"], vol["Size"], vol["State"]) == (snapshot_id, 1, "available")
    restored_sum, snapshot_sum = checksums(lab, restored, snapshot_id)
    assert restored_sum == snapshot_sum
    # The restored volume is sparse too: only the snapshot's blocks are allocated.
    _, source_allocated = allocated_bytes(lab, volume_id)
    _, restored_allocated = allocated_bytes(lab, restored)
    assert restored_allocated <= source_allocated + 4 * BLOCK


def test_snapshot_is_pending_then_completed(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    created = ec2.create_snapshot(VolumeId=volume_id)
    assert created["State"] == "pending"
    described = ec2.describe_snapshots(SnapshotIds=[created["SnapshotId"]])["Snapshots"][0]
    assert described["State"] == "pending"
    wait_completed(ec2, created["SnapshotId"])
    described = ec2.describe_snapshots(SnapshotIds=[created["SnapshotId"]])["Snapshots"][0]
    assert (described["State"], described["Progress"]) == ("completed", "100%")


# -- copies, sharing, accounts, Regions ------------------------------------------------------------
def test_copies_across_regions_and_accounts_restore_to_the_same_data(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.03, seed_value=25)
    ec2 = client(lab, "ec2")
    ec2_eu = client(lab, "ec2", OTHER_REGION)
    creds_b = account_b_creds(lab)
    ec2_b = client(lab, "ec2", creds=creds_b)
    ec2_b_eu = client(lab, "ec2", OTHER_REGION, creds=creds_b)
    snapshot_id = snapshot(ec2, volume_id)

    # Not shared yet: account B cannot copy it.
    with pytest.raises(ClientError) as exc:
        ec2_b.copy_snapshot(SourceSnapshotId=snapshot_id, SourceRegion="us-east-1")
    assert error_of(exc.value) == ("InvalidSnapshot.NotFound", 400)

    share(ec2, snapshot_id, ACCOUNT_B)
    perms = ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    assert perms == [{"UserId": ACCOUNT_B}]
    restorable = ec2_b.describe_snapshots(RestorableByUserIds=["self"])["Snapshots"]
    assert snapshot_id in {s["SnapshotId"] for s in restorable}

    copies = [
        (ec2_eu, "eu-west-1a", ACCOUNT_A),  # cross-Region, same account
        (ec2_b, ZONE, ACCOUNT_B),  # cross-account, same Region
        (ec2_b_eu, "eu-west-1a", ACCOUNT_B),  # cross-account and cross-Region
    ]
    copy_ids = [
        ec2_dest.copy_snapshot(SourceSnapshotId=snapshot_id, SourceRegion="us-east-1")["SnapshotId"]
        for ec2_dest, _, _ in copies
    ]
    restored = []
    for (ec2_dest, zone, owner), copy_id in zip(copies, copy_ids, strict=True):
        wait_completed(ec2_dest, copy_id)
        described = ec2_dest.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
        assert described["OwnerId"] == owner
        restored.append(restore(ec2_dest, copy_id, zone))
    expected, *got = checksums(lab, snapshot_id, *restored)
    assert got == [expected] * 3

    # Once the permission is removed, B can no longer copy it.
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id,
        Attribute="createVolumePermission",
        CreateVolumePermission={"Remove": [{"UserId": ACCOUNT_B}]},
    )
    with pytest.raises(ClientError) as exc:
        ec2_b.copy_snapshot(SourceSnapshotId=snapshot_id, SourceRegion="us-east-1")
    assert error_of(exc.value) == ("InvalidSnapshot.NotFound", 400)


def test_kms_keys_follow_snapshots_volumes_and_copies(lab: Any) -> None:
    ec2, kms = client(lab, "ec2"), client(lab, "kms")
    ec2_eu, kms_eu = client(lab, "ec2", OTHER_REGION), client(lab, "kms", OTHER_REGION)
    key = kms.create_key(Description="lab test CMK")["KeyMetadata"]["Arn"]
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE, Encrypted=True, KmsKeyId=key)[
        "VolumeId"
    ]
    snapshot_id = snapshot(ec2, volume_id)
    snap = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert (snap["Encrypted"], snap["KmsKeyId"]) == (True, key)

    restored = ec2.describe_volumes(VolumeIds=[restore(ec2, snapshot_id)])["Volumes"][0]
    assert (restored["Encrypted"], restored["KmsKeyId"]) == (True, key)

    # Encrypted copy without KmsKeyId: the destination Region's default EBS key (aws/ebs).
    default_copy = ec2_eu.copy_snapshot(
        SourceSnapshotId=snapshot_id, SourceRegion="us-east-1", Encrypted=True
    )["SnapshotId"]
    described = ec2_eu.describe_snapshots(SnapshotIds=[default_copy])["Snapshots"][0]
    default_key = kms_eu.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
    assert described["Encrypted"] is True
    assert described["KmsKeyId"] == default_key
    assert ":eu-west-1:" in default_key

    # Copy with KmsKeyId: that key.
    eu_key = kms_eu.create_key(Description="lab test CMK eu")["KeyMetadata"]["Arn"]
    cmk_copy = ec2_eu.copy_snapshot(
        SourceSnapshotId=snapshot_id, SourceRegion="us-east-1", Encrypted=True, KmsKeyId=eu_key
    )["SnapshotId"]
    described = ec2_eu.describe_snapshots(SnapshotIds=[cmk_copy])["Snapshots"][0]
    assert (described["Encrypted"], described["KmsKeyId"]) == (True, eu_key)

    # Another account's copy of the shared CMK snapshot: that account's default key.
    creds_b = account_b_creds(lab)
    ec2_b = client(lab, "ec2", creds=creds_b)
    share(ec2, snapshot_id, ACCOUNT_B)
    b_copy = ec2_b.copy_snapshot(
        SourceSnapshotId=snapshot_id, SourceRegion="us-east-1", Encrypted=True
    )["SnapshotId"]
    described = ec2_b.describe_snapshots(SnapshotIds=[b_copy])["Snapshots"][0]
    b_default = client(lab, "kms", creds=creds_b).describe_key(KeyId="alias/aws/ebs")
    assert described["KmsKeyId"] == b_default["KeyMetadata"]["Arn"]
    assert f":{ACCOUNT_B}:" in described["KmsKeyId"]


def test_default_kms_key_id_matches_encrypted_copy_key(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    ec2_eu = client(lab, "ec2", OTHER_REGION)
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    snapshot_id = snapshot(ec2, volume_id)
    copy_id = ec2_eu.copy_snapshot(
        SourceSnapshotId=snapshot_id, SourceRegion="us-east-1", Encrypted=True
    )["SnapshotId"]
    described = ec2_eu.describe_snapshots(SnapshotIds=[copy_id])["Snapshots"][0]
    assert ec2_eu.get_ebs_default_kms_key_id()["KmsKeyId"] == described["KmsKeyId"]


def test_sharing_a_default_key_snapshot_is_refused(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE, Encrypted=True)["VolumeId"]
    snapshot_id = snapshot(ec2, volume_id)
    with pytest.raises(ClientError) as exc:
        share(ec2, snapshot_id, ACCOUNT_B)
    code, status = error_of(exc.value)
    assert status == 400 and code == "OperationNotPermitted"
    perms = ec2.describe_snapshot_attribute(
        SnapshotId=snapshot_id, Attribute="createVolumePermission"
    )["CreateVolumePermissions"]
    assert perms == []


def test_describe_snapshots_self_lists_only_own_snapshots(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    ec2_b = client(lab, "ec2", creds=account_b_creds(lab))
    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    own = snapshot(ec2, volume_id)
    share(ec2, own, ACCOUNT_B)  # visible to B, but not B's own
    mine = ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    assert own in {s["SnapshotId"] for s in mine}
    assert {s["OwnerId"] for s in mine} == {ACCOUNT_A}
    assert own not in {
        s["SnapshotId"] for s in ec2_b.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    }
    # No AMI noise: without filters, only the lab's accounts' snapshots exist at all.
    for region in ("us-east-1", OTHER_REGION):
        owners = {
            s["OwnerId"] for s in client(lab, "ec2", region).describe_snapshots()["Snapshots"]
        }
        assert owners <= {ACCOUNT_A, ACCOUNT_B}


def test_accounts_are_separate(lab: Any) -> None:
    creds_b = account_b_creds(lab)
    assert client(lab, "sts", creds=creds_b).get_caller_identity()["Account"] == ACCOUNT_B
    ec2, ec2_b = client(lab, "ec2"), client(lab, "ec2", creds=creds_b)
    seeded_b = seed(lab, fill=0.01, seed_value=26, extra=("--account", ACCOUNT_B))["instances"][0]
    assert seeded_b["account"] == ACCOUNT_B
    volume_b = seeded_b["volumes"][0]["volume_id"]
    volume_a = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    assert ec2_b.describe_volumes(VolumeIds=[volume_b])["Volumes"][0]["VolumeId"] == volume_b
    b_instances = ec2_b.describe_instances(InstanceIds=[seeded_b["instance_id"]])
    assert b_instances["Reservations"][0]["OwnerId"] == ACCOUNT_B
    for reader, foreign in ((ec2, volume_b), (ec2_b, volume_a)):
        with pytest.raises(ClientError) as exc:
            reader.describe_volumes(VolumeIds=[foreign])
        assert error_of(exc.value)[0] == "InvalidVolume.NotFound"
    # B's snapshot is B's, and B reads its blocks with B's credentials.
    snapshot_b = snapshot(ec2_b, volume_b)
    assert (
        ec2_b.describe_snapshots(SnapshotIds=[snapshot_b])["Snapshots"][0]["OwnerId"] == ACCOUNT_B
    )
    blocks, _ = list_blocks(client(lab, "ebs", creds=creds_b), snapshot_b)
    assert blocks


def test_regions_are_separate(lab: Any) -> None:
    out = seed(lab, fill=0.01, seed_value=27, extra=("--region", OTHER_REGION))["instances"][0]
    assert out["region"] == OTHER_REGION
    volume_id = out["volumes"][0]["volume_id"]
    vol = client(lab, "ec2", OTHER_REGION).describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
    assert vol["AvailabilityZone"].startswith(OTHER_REGION)
    with pytest.raises(ClientError) as exc:
        client(lab, "ec2").describe_volumes(VolumeIds=[volume_id])
    assert error_of(exc.value) == ("InvalidVolume.NotFound", 400)
    assert volume_id not in {
        v["VolumeId"] for v in client(lab, "ec2").describe_volumes()["Volumes"]
    }


# -- attach / detach ----------------------------------------------------------------------------
def test_attach_and_detach_validate_like_aws(lab: Any) -> None:
    ec2 = client(lab, "ec2")
    instance_id, other_instance = run_instance(ec2), run_instance(ec2)
    vol_1 = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    vol_2 = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    vol_b = ec2.create_volume(Size=1, AvailabilityZone="us-east-1b")["VolumeId"]

    ec2.attach_volume(VolumeId=vol_1, InstanceId=instance_id, Device="/dev/sdf")
    attachment = ec2.describe_volumes(VolumeIds=[vol_1])["Volumes"][0]["Attachments"][0]
    assert (attachment["InstanceId"], attachment["Device"]) == (instance_id, "/dev/sdf")

    def refused(expected: str, **kwargs: str) -> None:
        with pytest.raises(ClientError) as exc:
            ec2.attach_volume(**kwargs)
        assert error_of(exc.value) == (expected, 400)

    refused("VolumeInUse", VolumeId=vol_1, InstanceId=other_instance, Device="/dev/sdf")
    refused("InvalidVolume.ZoneMismatch", VolumeId=vol_b, InstanceId=instance_id, Device="/dev/sdg")
    refused("InvalidParameterValue", VolumeId=vol_2, InstanceId=instance_id, Device="/dev/sdf")
    refused("InvalidParameterValue", VolumeId=vol_2, InstanceId=instance_id, Device="/dev/sda1")
    with pytest.raises(ClientError) as exc:
        ec2.detach_volume(VolumeId=vol_1, InstanceId=other_instance)
    assert error_of(exc.value) == ("InvalidAttachment.NotFound", 400)

    # DetachVolume without InstanceId works, and the device name is free again.
    detached = ec2.detach_volume(VolumeId=vol_1)
    assert (detached["InstanceId"], detached["Device"]) == (instance_id, "/dev/sdf")
    vol = ec2.describe_volumes(VolumeIds=[vol_1])["Volumes"][0]
    assert (vol["State"], vol["Attachments"]) == ("available", [])
    ec2.attach_volume(VolumeId=vol_2, InstanceId=instance_id, Device="/dev/sdf")
    assert ec2.describe_volumes(VolumeIds=[vol_2])["Volumes"][0]["State"] == "in-use"
    ec2.attach_volume(VolumeId=vol_1, InstanceId=other_instance, Device="/dev/xvdf")
    ec2.detach_volume(VolumeId=vol_1, InstanceId=other_instance, Device="/dev/xvdf")

    ec2.terminate_instances(InstanceIds=[other_instance])
    refused("IncorrectState", VolumeId=vol_1, InstanceId=other_instance, Device="/dev/sdh")


# -- EBS direct APIs ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def paged_snapshots(lab: Any) -> dict[str, Any]:
    """A volume with >200 written blocks, a snapshot, >100 churned blocks, a second snapshot."""
    volume_id = seed_volume(lab, fill=0.12, seed_value=28)
    ec2 = client(lab, "ec2")
    first = snapshot(ec2, volume_id)
    churned = churn(lab, volume_id, 0.08, seed_value=5)
    second = snapshot(ec2, volume_id)
    return {"volume_id": volume_id, "first": first, "second": second, "churned": churned}


def test_list_snapshot_blocks_paginates(lab: Any, paged_snapshots: dict[str, Any]) -> None:
    ebs = client(lab, "ebs")
    snapshot_id = paged_snapshots["first"]
    page = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)
    assert (page["BlockSize"], page["VolumeSize"]) == (524288, 1)
    assert "NextToken" not in page
    full = [b["BlockIndex"] for b in page["Blocks"]]
    assert len(full) > 200
    assert_ascending_unique(full)

    paged, pages = list_blocks(ebs, snapshot_id, MaxResults=100)
    assert pages == -(-len(full) // 100)
    assert [b["BlockIndex"] for b in paged] == full

    start = full[len(full) // 2]
    from_start, _ = list_blocks(ebs, snapshot_id, MaxResults=100, StartingBlockIndex=start)
    assert [b["BlockIndex"] for b in from_start] == [i for i in full if i >= start]


def test_get_snapshot_block_checks_tokens_and_checksums(
    lab: Any, paged_snapshots: dict[str, Any]
) -> None:
    ebs = client(lab, "ebs")
    first, second = paged_snapshots["first"], paged_snapshots["second"]
    blocks, _ = list_blocks(ebs, first)
    for block in blocks[:: max(1, len(blocks) // 12)]:  # a dozen blocks across the volume
        get_block(ebs, first, block["BlockIndex"], block["BlockToken"])

    a, b = blocks[0], blocks[1]
    second_tokens = {x["BlockIndex"]: x["BlockToken"] for x in list_blocks(ebs, second)[0]}
    bad_tokens = [
        (a["BlockIndex"], b["BlockToken"]),  # another block's token
        (a["BlockIndex"], "not-a-token"),
        (a["BlockIndex"], second_tokens[a["BlockIndex"]]),  # same index, another snapshot
    ]
    for index, token in bad_tokens:
        with pytest.raises(ClientError) as exc:
            ebs.get_snapshot_block(SnapshotId=first, BlockIndex=index, BlockToken=token)
        assert error_of(exc.value) == ("ValidationException", 400)

    written = {x["BlockIndex"] for x in blocks}
    missing = next(i for i in range(2048) if i not in written)
    with pytest.raises(ClientError) as exc:
        ebs.get_snapshot_block(SnapshotId=first, BlockIndex=missing, BlockToken=a["BlockToken"])
    assert error_of(exc.value) == ("ResourceNotFoundException", 404)


def test_list_changed_blocks_equals_churned_blocks(
    lab: Any, paged_snapshots: dict[str, Any]
) -> None:
    ebs = client(lab, "ebs")
    first, second, churned = (
        paged_snapshots["first"],
        paged_snapshots["second"],
        paged_snapshots["churned"],
    )
    assert len(churned) > 100
    full, pages = changed_blocks(ebs, first, second)
    assert pages == 1
    paged, pages = changed_blocks(ebs, first, second, MaxResults=100)
    assert pages == -(-len(churned) // 100)
    assert paged == full
    indexes = [c["BlockIndex"] for c in paged]
    assert_ascending_unique(indexes)
    assert indexes == churned

    in_first = {b["BlockIndex"]: b["BlockToken"] for b in list_blocks(ebs, first)[0]}
    only_second = [c for c in paged if c["BlockIndex"] not in in_first]
    assert only_second, "churn writes some previously empty blocks"
    for c in only_second:
        assert "FirstBlockToken" not in c and "SecondBlockToken" in c
    for c in paged:
        if c["BlockIndex"] in in_first:
            assert "FirstBlockToken" in c and "SecondBlockToken" in c

    # The tokens read the old and the new data of a changed block.
    both = next(c for c in paged if "FirstBlockToken" in c)
    old = get_block(ebs, first, both["BlockIndex"], both["FirstBlockToken"])
    assert old == get_block(ebs, first, both["BlockIndex"], in_first[both["BlockIndex"]])
    new = get_block(ebs, second, both["BlockIndex"], both["SecondBlockToken"])
    assert new != old
    new_only = only_second[0]
    get_block(ebs, second, new_only["BlockIndex"], new_only["SecondBlockToken"])

    start = indexes[len(indexes) // 2]
    tail, _ = changed_blocks(ebs, first, second, MaxResults=100, StartingBlockIndex=start)
    assert [c["BlockIndex"] for c in tail] == [i for i in indexes if i >= start]


def test_list_changed_blocks_between_identical_snapshots_is_empty(
    lab: Any, paged_snapshots: dict[str, Any]
) -> None:
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    third = snapshot(ec2, paged_snapshots["volume_id"])
    assert changed_blocks(ebs, paged_snapshots["second"], third)[0] == []


def test_list_changed_blocks_of_unrelated_snapshots_is_refused(
    lab: Any, paged_snapshots: dict[str, Any]
) -> None:
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    other = snapshot(ec2, seed_volume(lab, fill=0.01, seed_value=29))
    with pytest.raises(ClientError) as exc:
        ebs.list_changed_blocks(FirstSnapshotId=paged_snapshots["first"], SecondSnapshotId=other)
    assert error_of(exc.value) == ("ValidationException", 400)

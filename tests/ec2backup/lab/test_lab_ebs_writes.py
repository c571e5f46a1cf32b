"""EBS direct writes in the lab: StartSnapshot / PutSnapshotBlock / CompleteSnapshot, with AWS's
validation, parent inheritance and ClientToken idempotency; the result restores byte-exact."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from typing import Any

import pytest
from botocore.exceptions import ClientError

BLOCK = 512 * 1024


def _checksum(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def _put(ebs: Any, snapshot_id: str, index: int, data: bytes, checksum: str | None = None) -> None:
    """PutSnapshotBlock, retrying while the new snapshot is not yet known (as on AWS)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            ebs.put_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=index,
                BlockData=data,
                DataLength=len(data),
                Checksum=checksum or _checksum(data),
                ChecksumAlgorithm="SHA256",
            )
            return
        except ClientError as exc:
            unknown = exc.response["Error"]["Code"] == "ResourceNotFoundException"
            if not unknown or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_start_put_complete_round_trip(lab: Any) -> None:
    ebs, ec2 = lab.client("ebs"), lab.client("ec2")
    token = os.urandom(8).hex()
    started = ebs.start_snapshot(
        VolumeSize=1,
        ClientToken=token,
        Description="restore",
        Tags=[{"Key": "purpose", "Value": "test"}],
    )
    snapshot_id = started["SnapshotId"]
    assert started["Status"] == "pending" and started["BlockSize"] == BLOCK
    # A retried StartSnapshot with the same token is the same snapshot.
    assert ebs.start_snapshot(VolumeSize=1, ClientToken=token)["SnapshotId"] == snapshot_id
    described = ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]
    assert described["State"] == "pending"
    assert {"Key": "purpose", "Value": "test"} in described["Tags"]
    blocks = {3: os.urandom(BLOCK), 2047: b"z" * BLOCK}
    for index, data in blocks.items():
        _put(ebs, snapshot_id, index, data)
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=len(blocks))
    assert ec2.describe_snapshots(SnapshotIds=[snapshot_id])["Snapshots"][0]["State"] == (
        "completed"
    )
    listed = ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]
    assert [b["BlockIndex"] for b in listed] == sorted(blocks)
    volume_id = ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone="us-east-1a")["VolumeId"]
    expected = hashlib.sha256()
    for index in range(2048):
        expected.update(blocks.get(index, bytes(BLOCK)))
    assert lab.cli("lab", "checksum", volume_id).stdout.strip() == expected.hexdigest()


def test_put_validation(lab: Any) -> None:
    ebs = lab.client("ebs")
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(BLOCK)
    with pytest.raises(ClientError) as bad_sum:
        _put(ebs, snapshot_id, 0, data, checksum=_checksum(b"other"))
    with pytest.raises(ClientError) as short:
        _put(ebs, snapshot_id, 0, data[:1000])
    with pytest.raises(ClientError) as out_of_range:
        _put(ebs, snapshot_id, 2048, data)
    assert {_code(bad_sum), _code(short), _code(out_of_range)} == {"ValidationException"}
    _put(ebs, snapshot_id, 0, data)
    with pytest.raises(ClientError) as count:
        ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=5)
    assert _code(count) == "ValidationException"
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)
    with pytest.raises(ClientError) as after:
        _put(ebs, snapshot_id, 1, data)
    assert _code(after) == "ValidationException"


def test_parent_blocks_are_inherited_and_related(lab: Any) -> None:
    ebs = lab.client("ebs")
    parent = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    _put(ebs, parent, 1, b"a" * BLOCK)
    _put(ebs, parent, 2, b"b" * BLOCK)
    ebs.complete_snapshot(SnapshotId=parent, ChangedBlocksCount=2)
    child = ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=parent)["SnapshotId"]
    _put(ebs, child, 2, b"c" * BLOCK)
    ebs.complete_snapshot(SnapshotId=child, ChangedBlocksCount=1)
    listed = [b["BlockIndex"] for b in ebs.list_snapshot_blocks(SnapshotId=child)["Blocks"]]
    assert listed == [1, 2]
    changed = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child)
    assert [c["BlockIndex"] for c in changed["ChangedBlocks"]] == [2]


@pytest.mark.parametrize("encrypted", [True, False])
def test_never_put_blocks_of_encrypted_snapshots_read_as_random_bytes(
    lab: Any, encrypted: bool
) -> None:
    """AWS: a block never put into an encrypted EBS-direct snapshot is the decryption of
    nothing (awslabs/coldsnap#395, bottlerocket-os/bottlerocket#2169), on volumes created from
    it too; unencrypted ones read as zeros. A volume created empty reads as zeros either way."""
    ebs, ec2 = lab.client("ebs"), lab.client("ec2")
    params: dict[str, Any] = {"Encrypted": True} if encrypted else {}
    snapshot_id = ebs.start_snapshot(VolumeSize=1, **params)["SnapshotId"]
    data = b"d" * BLOCK
    _put(ebs, snapshot_id, 5, data)
    _put(ebs, snapshot_id, 6, bytes(BLOCK))  # a written zero block reads as zeros
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=2)
    listed = [b["BlockIndex"] for b in ebs.list_snapshot_blocks(SnapshotId=snapshot_id)["Blocks"]]
    assert listed == [5, 6]  # only what was put is listed, random holes or not
    zeros = hashlib.sha256()
    for index in range(2048):
        zeros.update(data if index == 5 else bytes(BLOCK))
    volume_id = ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone="us-east-1a")["VolumeId"]
    got_snapshot = lab.cli("lab", "checksum", snapshot_id).stdout.strip()
    got_volume = lab.cli("lab", "checksum", volume_id).stdout.strip()
    assert got_snapshot == got_volume  # the snapshot's content is what its volumes read
    assert (got_volume == zeros.hexdigest()) is not encrypted
    if encrypted:  # deterministic: a second volume reads the same random bytes
        again = ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone="us-east-1a")
        assert lab.cli("lab", "checksum", again["VolumeId"]).stdout.strip() == got_volume
        # ... and a copy (re-keyed) keeps them: they are the snapshot's content now.
        copy = ec2.copy_snapshot(SourceSnapshotId=snapshot_id, SourceRegion="us-east-1")
        ec2.get_waiter("snapshot_completed").wait(
            SnapshotIds=[copy["SnapshotId"]], WaiterConfig={"Delay": 1, "MaxAttempts": 60}
        )
        assert lab.cli("lab", "checksum", copy["SnapshotId"]).stdout.strip() == got_volume
    empty = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a", Encrypted=True)
    zero_sum = hashlib.sha256(bytes(BLOCK) * 2048).hexdigest()
    assert lab.cli("lab", "checksum", empty["VolumeId"]).stdout.strip() == zero_sum


def test_a_new_snapshot_is_briefly_unknown_to_put_snapshot_block(lab: Any) -> None:
    """AWS: right after StartSnapshot, PutSnapshotBlock may answer that the snapshot does not
    exist (coldsnap PR #56); a writer must retry. The lab's window is 2 s by default."""
    ebs = lab.client("ebs")
    snapshot_id = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = b"x" * BLOCK
    with pytest.raises(ClientError) as unknown:
        ebs.put_snapshot_block(
            SnapshotId=snapshot_id,
            BlockIndex=0,
            BlockData=data,
            DataLength=BLOCK,
            Checksum=_checksum(data),
            ChecksumAlgorithm="SHA256",
        )
    assert _code(unknown) == "ResourceNotFoundException"
    t0 = time.monotonic()
    _put(ebs, snapshot_id, 0, data)  # retried until the snapshot is known
    assert time.monotonic() - t0 < 5
    ebs.complete_snapshot(SnapshotId=snapshot_id, ChangedBlocksCount=1)

"""Unit tests of worker planning: instance type, volume copies, placement, client token."""

from __future__ import annotations

import pytest

from ec2backup import workers
from ec2backup.models.session import ImageBackupSpec, WorkerSpec
from ec2backup.models.snapshots import SnapshotMember, SnapshotSet
from ec2backup.workers import WorkerError

BACKUP = "111111111111"
PROD = "222222222222"
PROD_ROLE = f"arn:aws:iam::{PROD}:role/ec2backup"


def snapshot_set(
    account: str = BACKUP, default_key: bool = False, sizes: tuple[int, ...] = (8, 100)
) -> SnapshotSet:
    members = [
        SnapshotMember(
            snapshot_id=f"snap-{n:017x}",
            volume_id=f"vol-{n:017x}",
            device=["/dev/sda1", "/dev/sdf", "/dev/sdg", "/dev/sdh"][n],
            size_gib=size,
            encrypted=default_key,
            kms_key_id="arn:aws:kms:us-east-1:1:key/aws-ebs" if default_key else None,
            default_key=default_key and n == 1,
        )
        for n, size in enumerate(sizes)
    ]
    return SnapshotSet(
        set_id="set-1",
        region="us-east-1",
        account_role_arn=None if account == BACKUP else PROD_ROLE,
        account=account,
        instance_id="i-0123456789abcdef0",
        availability_zone="us-east-1b",
        members=members,
    )


# ---- instance type -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("total_gib", "expected"),
    [
        (0, "c5.large"),
        (1, "c5.large"),
        (1023, "c5.large"),
        (1024, "c5.2xlarge"),
        (16 * 1024 - 1, "c5.2xlarge"),
        (16 * 1024, "c5.4xlarge"),
        (100_000, "c5.4xlarge"),
    ],
)
def test_plan_instance_type_thresholds(total_gib: int, expected: str) -> None:
    assert workers.plan_instance_type(total_gib) == expected


def test_plan_instance_type_requested_wins() -> None:
    assert workers.plan_instance_type(50_000, "m6i.large") == "m6i.large"
    assert workers.plan_instance_type(1, "r6i.8xlarge") == "r6i.8xlarge"


# ---- volume copies, iops, throughput -------------------------------------------------------
@pytest.mark.parametrize("size_gib", [1, 8, 100, 500, 501, 1000, 2048, 2049, 4000, 4096, 16384])
def test_plan_volume_bounds(size_gib: int) -> None:
    vtype, iops, throughput, copies = workers.plan_volume(size_gib)
    assert vtype == "gp3"
    assert workers.GP3_BASE_IOPS <= iops <= workers.GP3_MAX_IOPS
    assert workers.GP3_BASE_THROUGHPUT <= throughput <= workers.GP3_MAX_THROUGHPUT
    # gp3: at most 0.25 MiB/s of throughput per provisioned IOPS
    assert throughput <= iops * 0.25
    assert copies == (2 if size_gib > workers.SECOND_COPY_GIB else 1)


def test_plan_volume_scales_then_caps() -> None:
    assert workers.plan_volume(1)[1:3] == (3000, 125)
    # throughput = size/4 MiB/s, IOPS raised to 4 per MiB/s
    assert workers.plan_volume(2048)[1:3] == (3000, 512)
    assert workers.plan_volume(4000)[1:3] == (4000, 1000)
    assert workers.plan_volume(16384)[1:3] == (4000, 1000)
    throughputs = [workers.plan_volume(s)[2] for s in (100, 1000, 2000, 3000, 4000, 8000)]
    assert throughputs == sorted(throughputs)
    assert workers.plan_volume(2048)[3] == 1
    assert workers.plan_volume(2049)[3] == 2


def test_volume_plans_devices_and_blocks() -> None:
    plans = workers.volume_plans(snapshot_set(sizes=(8, 4096, 1)))
    assert [p.copies for p in plans] == [1, 2, 1]
    devices = [d for p in plans for d in p.worker_devices]
    assert len(devices) == len(set(devices)) == 4
    assert all(p.worker_device == p.worker_devices[0] for p in plans)
    assert plans[0].blocks_total == 8 * 1024**3 // (512 * 1024)
    assert plans[0].device == "/dev/sda1"


# ---- placement -----------------------------------------------------------------------------
def test_placement_same_account() -> None:
    for placement in ("auto", "backup"):
        where, why = workers.choose_placement(placement, snapshot_set(), BACKUP)
        assert where == "backup"
        assert BACKUP in why


def test_placement_production_requested() -> None:
    assert workers.choose_placement("production", snapshot_set(), BACKUP) == (
        "production",
        "requested",
    )
    where, _ = workers.choose_placement("production", snapshot_set(PROD, True), BACKUP)
    assert where == "production"


def test_placement_cross_account_shared() -> None:
    for placement in ("auto", "backup"):
        where, why = workers.choose_placement(placement, snapshot_set(PROD), BACKUP)
        assert where == "backup"
        assert "shared" in why


def test_placement_auto_default_key_goes_to_production() -> None:
    where, why = workers.choose_placement("auto", snapshot_set(PROD, default_key=True), BACKUP)
    assert where == "production"
    assert "default" in why and "aws/ebs" in why
    assert "vol-00000000000000001" in why


def test_placement_backup_with_default_key_raises() -> None:
    with pytest.raises(WorkerError, match="aws/ebs") as err:
        workers.choose_placement("backup", snapshot_set(PROD, default_key=True), BACKUP)
    assert "vol-00000000000000001" in str(err.value)


def test_build_plan_roles_follow_placement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EC2BACKUP_RANGE_BLOCKS", "512")
    monkeypatch.setenv("EC2BACKUP_HEARTBEAT_TIMEOUT_SECONDS", "7")
    monkeypatch.delenv("EC2BACKUP_AGENT_BOOT_TIMEOUT_SECONDS", raising=False)
    spec = ImageBackupSpec(repository="s3://b/p", worker=WorkerSpec(placement="auto"))
    prod = workers.build_plan("sess-1", snapshot_set(PROD, default_key=True), spec, BACKUP)
    assert prod.placement == "production"
    assert prod.worker_role_arn == PROD_ROLE
    assert prod.snapshot_role_arn == PROD_ROLE
    assert prod.range_blocks == 512
    assert prod.heartbeat_timeout_seconds == 7.0
    assert prod.boot_timeout_seconds == workers.DEFAULT_BOOT_TIMEOUT
    assert prod.availability_zone == "us-east-1b"
    assert prod.instance_type == "c5.large"
    shared = workers.build_plan("sess-1", snapshot_set(PROD), spec, BACKUP)
    assert shared.placement == "backup"
    assert shared.worker_role_arn is None
    assert shared.snapshot_role_arn == PROD_ROLE
    assert shared.secret_name == workers.session_secret_name("sess-1")
    assert shared.secret_name.startswith(workers.SESSION_SECRET_PREFIX)
    # The secret name does not reveal the session (hence not the instance) id.
    assert "sess-1" not in shared.secret_name


# ---- idempotency token ---------------------------------------------------------------------
def test_client_token_stable_distinct_and_short() -> None:
    long_id = "backup-i-0123456789abcdef0-" + "x" * 300
    for sid in ("s", "backup-i-0123456789abcdef0-deadbeef", long_id):
        for attempt in (0, 1, 7):
            token = workers.client_token(sid, attempt)
            assert token == workers.client_token(sid, attempt)
            assert 0 < len(token) <= 64
            assert token.isascii() and token.isprintable()
    tokens = {workers.client_token(s, a) for s in ("a", "b", long_id) for a in range(4)}
    assert len(tokens) == 12


def test_range_blocks_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EC2BACKUP_RANGE_BLOCKS", raising=False)
    assert workers.range_blocks() == 8 * 1024**3 // (512 * 1024)
    monkeypatch.setenv("EC2BACKUP_RANGE_BLOCKS", "64")
    assert workers.range_blocks() == 64


def test_copies_asked_give_one_stream_per_copy_of_whole_pages() -> None:
    big, small = workers.volume_plans(snapshot_set(sizes=(5, 1)), copies_asked=2)
    assert big.copies == 2 and big.worker_devices == ["/dev/sdf", "/dev/sdg"]
    spans = big.spans()
    # 5 GiB = 10,240 blocks = three 4,096-block pages: two pages, then one
    assert [(s.start, s.end, s.device) for s in spans] == [
        (0, 8192, "/dev/sdf"),
        (8192, 10240, "/dev/sdg"),
    ]
    assert [s.key for s in spans] == [f"{big.source_volume_id}#0", f"{big.source_volume_id}#1"]
    # One page cannot be split: two copies, one stream, keyed by the volume as before.
    assert small.copies == 2 and small.streams == 1
    assert [(s.key, s.start, s.end) for s in small.spans()] == [
        (small.source_volume_id, 0, small.blocks_total)
    ]
    with pytest.raises(WorkerError, match="more than the worker's 21 device names"):
        workers.volume_plans(snapshot_set(sizes=(8, 8, 8)), copies_asked=8)


def test_merged_streams_take_each_spans_pages_and_sum_their_counters() -> None:
    from ec2backup.imagebackup import merge_streams
    from ec2backup.models.session import Stream
    from ec2backup.repository.restorepoint import VolumeRecord, VolumeStats

    def record(pages: list[str | None], allocated: int, read: int) -> VolumeRecord:
        stats = VolumeStats(blocks_total=12288, blocks_allocated=allocated, blocks_read=read)
        return VolumeRecord(name="v", size=12288 * 512 * 1024, pages=pages, stats=stats)

    parent_allocated = 100  # both streams started from the parent's 100 allocated blocks
    first = record(["a1", "a2", "p3"], allocated=130, read=40)  # changed pages 0-1 (its span)
    second = record(["p1", "p2", "b3"], allocated=90, read=15)  # changed page 2 (its span)
    merged = merge_streams(
        [
            (Stream(key="v#0", start=0, end=8192), first, parent_allocated),
            (Stream(key="v#1", start=8192, end=12288), second, parent_allocated),
        ]
    )
    assert merged.pages == ["a1", "a2", "b3"]
    assert merged.stats.blocks_allocated == 100 + 30 - 10
    assert merged.stats.blocks_read == 55 and merged.stats.blocks_total == 12288

"""The lab's timing model (ec2backup_lab/timing.py, firstread.py; docs/lab.md "Timing model"):
with it off (the default, every other test) the lab answers at once; with knobs set through
`/_lab/config` it takes AWS's time and enforces AWS's EBS direct request limits.

Timing assertions are lower bounds of the modelled delays (a loaded 2-core machine only ever
adds time); upper bounds only where the model itself promises one (admitted request rates).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import (
    BLOCK,
    LAB_AMI,
    ZONE,
    DigestProbe,
    DigestProbeInput,
    client,
    control_get,
    control_post,
    error_of,
    list_blocks,
    restore,
    seed,
    snapshot,
)
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ec2backup.models.agent import DigestBlocksOutput
from ec2backup.temporal import connect
from ec2backup.userdata import HOST_TASK_QUEUE_TEMPLATE, render_agent_user_data

# What a modelled delay may come in under its nominal value: clocks and rounding, not load.
EARLY = 0.9
TIMING_KEYS = (
    "timing",
    "timing_scale",
    "worker_boot_seconds",
    "volume_create_seconds",
    "volume_attach_seconds",
    "first_read_mib_s",
    "ebs_direct_latency_ms",
    "ebs_get_block_rps_account",
    "ebs_get_block_rps_snapshot",
    "ebs_put_block_rps_account",
    "ebs_put_block_rps_snapshot",
    "ebs_list_rps_account",
)
# Every delay off: a test turns on only what it measures.
NO_DELAYS = {
    "worker_boot_seconds": 0,
    "volume_create_seconds": 0,
    "volume_attach_seconds": 0,
    "first_read_mib_s": 0,
    "ebs_direct_latency_ms": 0,
}


Configure = Callable[..., dict[str, Any]]


@pytest.fixture
def configure(lab: Any) -> Iterator[Configure]:
    """Set timing knobs for one test; the lab's earlier values come back afterwards."""
    saved = {k: v for k, v in control_get(lab, "config").items() if k in TIMING_KEYS}

    def _set(**knobs: Any) -> dict[str, Any]:
        out: dict[str, Any] = control_post(lab, "config", knobs)
        assert all(out[k] == v for k, v in knobs.items()), out
        return out

    yield _set
    control_post(lab, "config", saved)


@dataclass
class Snapshots:
    first: str
    second: str
    blocks: dict[str, list[dict[str, Any]]]


@pytest.fixture(scope="module")
def snapshots(lab: Any) -> Snapshots:
    """Two completed snapshots of about 100 blocks each (seeded untimed), and their blocks."""
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    volumes = seed(lab, volumes=2, fill=0.05, seed_value=181)["instances"][0]["volumes"]
    first, second = (snapshot(ec2, v["volume_id"]) for v in volumes)
    return Snapshots(first, second, {s: list_blocks(ebs, s)[0] for s in (first, second)})


def ebs_metrics(lab: Any) -> dict[str, Any]:
    return control_get(lab, "metrics")["ebs_direct"]  # type: ignore[no-any-return]


def get_blocks(ebs: Any, snapshot_id: str, blocks: list[dict[str, Any]]) -> list[str | None]:
    """GetSnapshotBlock of each block from 8 threads: None when served, else the throttling
    reason (any other error fails the test)."""

    def one(block: dict[str, Any]) -> str | None:
        try:
            ebs.get_snapshot_block(
                SnapshotId=snapshot_id,
                BlockIndex=block["BlockIndex"],
                BlockToken=block["BlockToken"],
            )["BlockData"].read()
            return None
        except ClientError as exc:
            assert error_of(exc) == ("RequestThrottledException", 400), exc.response
            return str(exc.response["Reason"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(one, blocks))


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll until `predicate()`; returns the monotonic time it first held."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return time.monotonic()


def launch(ec2: Any, **extra: Any) -> str:
    """One small instance in the lab's zone (its agent too, given the agent's user-data)."""
    return str(
        ec2.run_instances(
            ImageId=LAB_AMI,
            MinCount=1,
            MaxCount=1,
            InstanceType="t3.micro",
            Placement={"AvailabilityZone": ZONE},
            **extra,
        )["Instances"][0]["InstanceId"]
    )


def test_volumes_are_creating_then_attaching_for_the_scaled_times(
    lab: Any, configure: Configure
) -> None:
    ec2 = client(lab, "ec2")
    # 10 s each at AWS's scale, 2 s here: `timing_scale` compresses every delay
    configure(
        timing=True,
        timing_scale=0.2,
        **{**NO_DELAYS, "volume_create_seconds": 10, "volume_attach_seconds": 10},
    )
    instance_id = launch(ec2)

    def volume() -> dict[str, Any]:
        return ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]  # type: ignore[no-any-return]

    started = time.monotonic()
    created = ec2.create_volume(Size=1, AvailabilityZone=ZONE)
    volume_id = created["VolumeId"]
    assert created["State"] == "creating" and volume()["State"] == "creating"
    with pytest.raises(ClientError) as exc:  # AWS: a volume is attached once it is available
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert error_of(exc.value) == ("IncorrectState", 400)
    available = wait_for(lambda: volume()["State"] == "available", 30, "the volume")
    assert available - started >= 2.0 * EARLY

    started = time.monotonic()
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    assert volume()["Attachments"][0]["State"] == "attaching"

    def device() -> Any:
        return control_get(lab, f"instances/{instance_id}/devices")["devices"]["/dev/sdf"]["nvme"]

    assert device() is None  # the instance sees no device while the attachment is under way
    attached = wait_for(
        lambda: volume()["Attachments"][0]["State"] == "attached", 30, "the attachment"
    )
    assert attached - started >= 2.0 * EARLY
    wait_for(lambda: device() is not None, 10, "the NVMe device")
    ec2.terminate_instances(InstanceIds=[instance_id])


def test_get_snapshot_block_over_the_account_limit_is_throttled_as_aws(
    lab: Any, configure: Configure, snapshots: Snapshots
) -> None:
    """An account limit of 20/s (the knob alone: it holds with the timing model off): the
    rest are refused with AWS's error and reason, and no 1-second window admitted more."""
    ebs = client(lab, "ebs")
    configure(timing=False, ebs_get_block_rps_account=20)
    control_post(lab, "metrics", {"reset": True})
    blocks = snapshots.blocks[snapshots.first][:60]
    started = time.monotonic()
    outcomes = get_blocks(ebs, snapshots.first, blocks)
    elapsed = time.monotonic() - started
    served = outcomes.count(None)
    assert set(outcomes) - {None} == {"ACCOUNT_THROTTLED"}
    # however fast the client, at most 20 in any second: the first 20, then 20 per second
    assert 0 < served <= 20 * (1 + int(elapsed))
    counted = ebs_metrics(lab)["GetSnapshotBlock"]
    assert counted["requests"] == len(blocks)
    assert counted["throttled"] == len(blocks) - served > 0
    assert 0 < counted["peak_rps_account"] <= 20
    assert counted["limit_rps_account"] == 20


def test_the_per_snapshot_limit_throttles_that_snapshot_only(
    lab: Any, configure: Configure, snapshots: Snapshots
) -> None:
    ebs = client(lab, "ebs")
    configure(timing=False, ebs_get_block_rps_account=0, ebs_get_block_rps_snapshot=10)
    control_post(lab, "metrics", {"reset": True})
    started = time.monotonic()
    first = get_blocks(ebs, snapshots.first, snapshots.blocks[snapshots.first][:30])
    elapsed = time.monotonic() - started
    # right after: another snapshot has its own 10 per second
    second = get_blocks(ebs, snapshots.second, snapshots.blocks[snapshots.second][:10])
    assert set(first) - {None} == {"RESOURCE_LEVEL_THROTTLE"}
    assert 0 < first.count(None) <= 10 * (1 + int(elapsed))
    assert second == [None] * 10
    counted = ebs_metrics(lab)["GetSnapshotBlock"]
    assert counted["requests"] == 40 and counted["throttled"] == first.count(
        "RESOURCE_LEVEL_THROTTLE"
    )
    assert counted["peak_rps_snapshot"] == 10
    # the account-wide window counts both snapshots' requests
    assert counted["peak_rps_account"] >= 10


def test_ebs_direct_latency_adds_time_and_timing_turns_on_aws_quotas(
    lab: Any, configure: Configure, snapshots: Snapshots
) -> None:
    ebs = client(lab, "ebs")
    blocks = snapshots.blocks[snapshots.first][:5]
    configure(timing=True, timing_scale=1.0, **{**NO_DELAYS, "ebs_direct_latency_ms": 200})
    started = time.monotonic()
    for block in blocks:  # one connection, one request at a time: 200 ms each
        ebs.get_snapshot_block(
            SnapshotId=snapshots.first,
            BlockIndex=block["BlockIndex"],
            BlockToken=block["BlockToken"],
        )["BlockData"].read()
    assert time.monotonic() - started >= len(blocks) * 0.2 * EARLY
    # limits left at 0 are AWS's quotas once the model is on
    counted = ebs_metrics(lab)
    assert counted["GetSnapshotBlock"]["limit_rps_account"] == 1000
    assert counted["PutSnapshotBlock"]["limit_rps_snapshot"] == 1000
    assert counted["ListChangedBlocks"]["limit_rps_account"] == 50


@pytest.fixture
async def temporal(lab: Any) -> AsyncIterator[tuple[Client, str]]:
    lab.use_payload_keys()
    temporal = await connect(lab.temporal_address)
    task_queue = f"lab-timing-{uuid.uuid4().hex}"
    async with Worker(
        temporal,
        task_queue=task_queue,
        workflows=[DigestProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield temporal, task_queue


async def test_first_reads_of_a_volume_from_a_snapshot_are_slow_then_fast(
    lab: Any, configure: Configure, snapshots: Snapshots, temporal: tuple[Client, str]
) -> None:
    """A real worker agent reads 32 blocks (16 MiB) of a volume restored from a snapshot at a
    first-read rate of 8 MiB/s: 2 s or more; the same blocks again take far less."""
    ec2 = client(lab, "ec2")
    temporal_client, task_queue = temporal
    configure(
        timing=True,
        timing_scale=1.0,
        **{**NO_DELAYS, "worker_boot_seconds": 0.5, "first_read_mib_s": 8},
    )
    held = [b["BlockIndex"] for b in snapshots.blocks[snapshots.first]]
    assert len(held) >= 32
    holes = [i for i in range(max(held)) if i not in set(held)][:4]  # nothing to fetch there
    instance_id = launch(ec2, UserData=render_agent_user_data(lab.temporal_address))
    try:
        volume_id = restore(ec2, snapshots.first)

        def running() -> bool:  # AWS attaches to running instances only
            reservations = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"]
            return bool(reservations[0]["Instances"][0]["State"]["Name"] == "running")

        wait_for(running, 30, "the instance to run")
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdg")
        wait_for(
            lambda: instance_id in control_get(lab, "metrics")["agents"], 30, "the agent to boot"
        )

        async def digest(indexes: list[int]) -> float:
            started = time.monotonic()
            out: DigestBlocksOutput = await temporal_client.execute_workflow(
                DigestProbe.run,
                DigestProbeInput(
                    task_queue=HOST_TASK_QUEUE_TEMPLATE.format(instance_id=instance_id),
                    device="/dev/sdg",
                    volume_id=volume_id,
                    block_indexes=indexes,
                ),
                id=f"lab-timing-digest-{uuid.uuid4().hex}",
                task_queue=task_queue,
                execution_timeout=timedelta(seconds=90),
            )
            assert out.bytes_read == len(indexes) * BLOCK
            return time.monotonic() - started

        await digest(holes)  # the agent warmed up (connected, first activity run)
        first = await digest(held[:32])
        second = await digest(held[:32])
        assert first >= 32 * BLOCK / (8 * 1024**2) * EARLY
        assert second < first - 1.0
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_a_pending_instance_refuses_attach_volume_as_aws(lab: Any, configure: Configure) -> None:
    """AWS attaches volumes to running or stopped instances only (the lab attached to a
    booting one)."""
    ec2 = client(lab, "ec2")
    configure(timing=True, timing_scale=1.0, **{**NO_DELAYS, "worker_boot_seconds": 20})
    instance_id = launch(ec2)
    try:
        volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
        state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][
            0
        ]["State"]["Name"]
        assert state == "pending"
        with pytest.raises(ClientError) as exc:
            ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
        assert error_of(exc.value) == ("IncorrectState", 400)
        assert "is not 'running'" in str(exc.value)
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])


def test_the_product_attaches_a_volume_only_once_the_instance_sees_it(
    lab: Any, configure: Configure
) -> None:
    """`workers.attach_volume` returns once the attachment is `attached` (AttachVolume itself
    returns while it is `attaching`, and the agent opens the device right after): the NVMe
    device is there when it returns (it failed with DeviceMismatch under the timing model)."""
    from ec2backup import workers

    ec2 = client(lab, "ec2")
    configure(timing=True, timing_scale=0.2, **{**NO_DELAYS, "volume_attach_seconds": 10})
    instance_id = launch(ec2)
    created = ec2.create_volume(Size=1, AvailabilityZone=ZONE)
    found = ec2.describe_volumes(VolumeIds=[created["VolumeId"]])["Volumes"][0]
    started = time.monotonic()
    volume_id = workers.attach_volume(
        ec2,
        "attach-test",
        instance_id,
        {("vol-source", "/dev/sdf"): found},
        source_volume_id="vol-source",
        device="/dev/sdf",
        availability_zone=ZONE,
        create={},
    )
    assert volume_id == created["VolumeId"] and time.monotonic() - started >= 2.0 * EARLY
    devices = control_get(lab, f"instances/{instance_id}/devices")["devices"]
    assert devices["/dev/sdf"]["nvme"] is not None, devices
    ec2.terminate_instances(InstanceIds=[instance_id])

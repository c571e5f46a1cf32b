"""Worker instances: RunInstances with the agent user-data boots a real `ec2backup agent` process
that serves its host task queue over the lab's Temporal server.

Covered: the agent is a live process listed by `lab metrics`; `AgentProbe` reaches it and sees
the instance's devices; `agent_digest_blocks` reads a device's blocks (same bytes as the
snapshot it was restored from, counted in `agent_bytes_read`); TerminateInstances stops the
agent; `lab kill-instance` kills it at once while the instance stays describable.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from lab_helpers import (
    BLOCK,
    LAB_AMI,
    ZONE,
    DigestProbe,
    DigestProbeInput,
    cli_json,
    client,
    get_block,
    list_blocks,
    metrics,
    pid_alive,
    restore,
    seed_volume,
    snapshot,
)
from temporalio.client import Client, WorkflowFailureError
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

from ec2backup.models.agent import DigestBlocksOutput
from ec2backup.temporal import connect
from ec2backup.userdata import HOST_TASK_QUEUE_TEMPLATE, render_agent_user_data
from workflows.agent_probe import AgentProbe, AgentProbeInput, AgentProbeOutput


class Probes:
    """A test-side Temporal worker running the probe workflows on its own task queue."""

    def __init__(self, client: Client, task_queue: str) -> None:
        self.client, self.task_queue = client, task_queue

    async def describe(self, instance_id: str) -> AgentProbeOutput:
        return await self.client.execute_workflow(
            AgentProbe.run,
            AgentProbeInput(task_queue=HOST_TASK_QUEUE_TEMPLATE.format(instance_id=instance_id)),
            id=f"lab-test-probe-{uuid.uuid4().hex}",
            task_queue=self.task_queue,
            execution_timeout=timedelta(seconds=90),
        )

    async def digest(
        self, instance_id: str, device: str, indexes: list[int], volume_id: str | None = None
    ) -> DigestBlocksOutput:
        return await self.client.execute_workflow(
            DigestProbe.run,
            DigestProbeInput(
                task_queue=HOST_TASK_QUEUE_TEMPLATE.format(instance_id=instance_id),
                device=device,
                block_indexes=indexes,
                volume_id=volume_id,
            ),
            id=f"lab-test-digest-{uuid.uuid4().hex}",
            task_queue=self.task_queue,
            execution_timeout=timedelta(seconds=90),
        )


@pytest.fixture
async def probes(lab: Any) -> AsyncIterator[Probes]:
    lab.use_payload_keys()
    temporal = await connect(lab.temporal_address)
    task_queue = f"lab-tests-{uuid.uuid4().hex}"
    async with Worker(
        temporal,
        task_queue=task_queue,
        workflows=[AgentProbe, DigestProbe],
        workflow_runner=UnsandboxedWorkflowRunner(),
    ):
        yield Probes(temporal, task_queue)


def launch_worker(lab: Any) -> tuple[str, int]:
    """RunInstances with the agent user-data; returns (instance id, agent pid)."""
    ec2 = client(lab, "ec2")
    instance_id = ec2.run_instances(
        ImageId=LAB_AMI,
        MinCount=1,
        MaxCount=1,
        InstanceType="t3.micro",
        Placement={"AvailabilityZone": ZONE},
        UserData=render_agent_user_data(lab.temporal_address),
    )["Instances"][0]["InstanceId"]
    agents = metrics(lab)["agents"]
    assert instance_id in agents, agents
    pid = int(agents[instance_id])
    assert pid_alive(pid)
    return instance_id, pid


def wait_dead(pid: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"agent pid {pid} still alive"
        time.sleep(0.1)


async def test_worker_instance_runs_a_live_agent_until_terminated(lab: Any, probes: Probes) -> None:
    ec2 = client(lab, "ec2")
    instance_id, pid = launch_worker(lab)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    assert b"agent" in cmdline and HOST_TASK_QUEUE_TEMPLATE.encode() in cmdline

    volume_id = ec2.create_volume(Size=1, AvailabilityZone=ZONE)["VolumeId"]
    ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdf")
    host = (await probes.describe(instance_id)).host
    assert host.instance_id == instance_id
    # A Nitro instance: the volume is an NVMe device (named by enumeration), no /dev/sdf.
    devices = {d.volume_id: d for d in host.devices}
    assert devices[volume_id].device.startswith("/dev/nvme")
    assert devices[volume_id].size_bytes == 1024**3
    assert "/dev/sdf" not in {d.device for d in host.devices}

    ec2.terminate_instances(InstanceIds=[instance_id])
    wait_dead(pid)
    assert instance_id not in metrics(lab)["agents"]
    state = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert state["State"]["Name"] in ("shutting-down", "terminated")


async def test_agent_digests_blocks_of_an_attached_volume(lab: Any, probes: Probes) -> None:
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    snapshot_id = snapshot(ec2, seed_volume(lab, fill=0.02, seed_value=51))
    blocks, _ = list_blocks(ebs, snapshot_id)
    chosen = blocks[:: max(1, len(blocks) // 8)][:8]
    indexes = [b["BlockIndex"] for b in chosen]
    expected = hashlib.sha256()
    for b in chosen:
        expected.update(get_block(ebs, snapshot_id, b["BlockIndex"], b["BlockToken"]))

    instance_id, pid = launch_worker(lab)
    try:
        volume_id = restore(ec2, snapshot_id)
        ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device="/dev/sdg")
        before = metrics(lab)["agent_bytes_read"].get(volume_id, 0)
        out = await probes.digest(instance_id, "/dev/sdg", indexes, volume_id)
        assert out.volume_id == volume_id
        assert out.bytes_read == len(indexes) * BLOCK
        assert out.sha256 == expected.hexdigest()
        after = metrics(lab)["agent_bytes_read"].get(volume_id, 0)
        assert after - before == len(indexes) * BLOCK
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    wait_dead(pid)


async def test_nvme_devices_come_in_another_order_and_are_found_by_volume_id(
    lab: Any, probes: Probes
) -> None:
    """Volumes attached as /dev/sdf, sdg, sdh appear as NVMe devices numbered in another
    order, without /dev/sdX names; the agent reads each volume by its id (by-id link)."""
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    snaps = [snapshot(ec2, seed_volume(lab, fill=0.02, seed_value=60 + i)) for i in range(3)]
    first_blocks = []
    for snap in snaps:
        blocks, _ = list_blocks(ebs, snap)
        first_blocks.append((blocks[0]["BlockIndex"], blocks[0]["BlockToken"]))
    instance_id, pid = launch_worker(lab)
    try:
        volumes = [restore(ec2, snap) for snap in snaps]
        attached = ["/dev/sdf", "/dev/sdg", "/dev/sdh"]
        for volume_id, device in zip(volumes, attached, strict=True):
            ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
        host = (await probes.describe(instance_id)).host
        by_name = sorted(host.devices, key=lambda d: int(d.device[len("/dev/nvme") : -2]))
        assert all(d.device.startswith("/dev/nvme") for d in by_name)
        assert [d.volume_id for d in by_name] != volumes  # enumeration order is not ours
        for volume_id, device, snap, (index, token) in zip(
            volumes, attached, snaps, first_blocks, strict=True
        ):
            out = await probes.digest(instance_id, device, [index], volume_id)
            assert out.volume_id == volume_id
            assert out.sha256 == hashlib.sha256(get_block(ebs, snap, index, token)).hexdigest()
        # Without the id, the attachment's name alone finds nothing on a Nitro instance.
        with pytest.raises(WorkflowFailureError):
            await probes.digest(instance_id, "/dev/sdf", [0])
    finally:
        ec2.terminate_instances(InstanceIds=[instance_id])
    wait_dead(pid)


async def test_kill_instance_kills_the_agent_and_keeps_the_instance(
    lab: Any, probes: Probes
) -> None:
    ec2 = client(lab, "ec2")
    instance_id, pid = launch_worker(lab)
    assert (await probes.describe(instance_id)).host.instance_id == instance_id
    out = cli_json(lab, "lab", "kill-instance", instance_id)
    assert out == {"instance_id": instance_id, "agent_killed": True}
    assert not pid_alive(pid)
    assert instance_id not in metrics(lab)["agents"]
    desc = ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]
    assert desc["InstanceId"] == instance_id
    ec2.terminate_instances(InstanceIds=[instance_id])

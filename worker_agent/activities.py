"""Activities served by the worker agent on its host's own task queue.

They run where the devices are; the orchestrator reaches them through the task queue
`ec2backup-host-<instance-id>`. The data transfer itself arrives with the backup session.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel
from temporalio import activity

from worker_agent.devices import DeviceReader, resolve_device, volume_id_of


class DescribeHostInput(BaseModel):
    pass


class HostDevice(BaseModel):
    device: str
    volume_id: str
    size_bytes: int


class DescribeHostOutput(BaseModel):
    instance_id: str
    devices: list[HostDevice]


class DigestBlocksInput(BaseModel):
    device: str
    block_indexes: list[int]


class DigestBlocksOutput(BaseModel):
    volume_id: str
    sha256: str
    bytes_read: int


@activity.defn(name="agent_describe_host")
def describe_host(req: DescribeHostInput) -> DescribeHostOutput:
    """Who this host is and which block devices it sees."""
    devices: list[HostDevice] = []
    device_dir = os.environ.get("EC2BACKUP_DEVICE_DIR")
    names = sorted(os.listdir(device_dir)) if device_dir and os.path.isdir(device_dir) else []
    for name in names:
        path = resolve_device(f"/dev/{name}")
        if not path.exists():
            continue
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
        devices.append(
            HostDevice(device=f"/dev/{name}", volume_id=volume_id_of(path), size_bytes=size)
        )
    return DescribeHostOutput(
        instance_id=os.environ.get("EC2BACKUP_INSTANCE_ID", ""), devices=devices
    )


@activity.defn(name="agent_digest_blocks")
def digest_blocks(req: DigestBlocksInput) -> DigestBlocksOutput:
    """SHA-256 over the given blocks of a device, read in order (a device read self-test)."""
    digest = hashlib.sha256()
    total = 0
    with DeviceReader(req.device) as reader:
        for index in req.block_indexes:
            data = reader.read_block(index)
            digest.update(data)
            total += len(data)
        volume_id = reader.volume_id
    return DigestBlocksOutput(volume_id=volume_id, sha256=digest.hexdigest(), bytes_read=total)


ALL: list[Callable[..., Any]] = [describe_host, digest_blocks]

"""The worker agent's own activities (host task queue): who the host is, block digests."""

from __future__ import annotations

from pydantic import BaseModel


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
    device: str  # the attachment's device name (a fallback) ...
    block_indexes: list[int]
    volume_id: str | None = None  # ... the volume is found by its id (NVMe by-id) first


class DigestBlocksOutput(BaseModel):
    volume_id: str
    sha256: str
    bytes_read: int

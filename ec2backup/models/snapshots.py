"""Snapshot sets: the cloud-native restore point, as read back from its encrypted tags."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


# ---- snapshots ----------------------------------------------------------------------------------
class SnapshotMember(BaseModel):
    snapshot_id: str
    volume_id: str
    device: str
    size_gib: int
    encrypted: bool = False
    kms_key_id: str | None = None
    default_key: bool = False  # encrypted with the AWS managed aws/ebs key (cannot be shared)
    volume_type: str | None = None
    iops: int | None = None
    throughput: int | None = None


class SnapshotSet(BaseModel):
    set_id: str
    region: str
    account_role_arn: str | None = None
    account: str
    instance_id: str
    availability_zone: str
    members: list[SnapshotMember]
    instance_type: str | None = None
    root_device: str | None = None
    # What an image of the instance must say for it to boot again (RegisterImage): x86_64 |
    # arm64, ENA support, legacy-bios | uefi.
    architecture: str | None = None
    ena_support: bool | None = None
    boot_mode: str | None = None
    subnet_id: str | None = None
    instance_tags: dict[str, str] = Field(default_factory=dict)
    created: datetime | None = None  # the set's nominal time (its tags say the same)

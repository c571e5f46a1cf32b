"""Snapshot sets: the cloud-native restore point, as read back from its encrypted tags."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


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


class SnapshotLockSpec(BaseModel):
    """An EBS snapshot lock put on every snapshot of a set (policy `snapshots.lock`): governance
    (removable by whoever holds ec2:UnlockSnapshot) or compliance (after `cool_off_hours`,
    nobody can remove or shorten it, not even the account's root)."""

    model_config = ConfigDict(extra="forbid")  # a policy section: a typo must not pass

    mode: Literal["governance", "compliance"]
    days: int = Field(ge=1, le=36_500, description="how long each snapshot stays locked")
    cool_off_hours: int | None = Field(
        default=None,
        ge=1,
        le=72,
        description="compliance only: the hours during which the lock can still be removed",
    )

    @model_validator(mode="after")
    def _cool_off_is_compliance_only(self) -> SnapshotLockSpec:
        if self.cool_off_hours is not None and self.mode != "compliance":
            raise ValueError("cool_off_hours applies to compliance mode only")
        return self

"""Restore: the workflow's contract and its activities' inputs and outputs."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# ---- Restore workflow ---------------------------------------------------------------------------
RestoreKind = Literal["instance", "volume"]

RestoreSource = Literal["snapshot", "backup", "archive"]


class RestoreInput(BaseModel):
    kind: RestoreKind
    restore_point_id: str  # a snapshot set id (set-...) or a repository restore point id
    source: RestoreSource | None = None  # default: what the id names
    repository: str | None = None  # default: found by the catalog from the id
    region: str  # where the snapshot set lives (or the backup's home Region)
    account_role_arn: str | None = None  # account of the snapshot set
    to_region: str | None = None
    to_account_role_arn: str | None = None
    subnet_id: str | None = None
    instance_type: str | None = None
    kms_key_id: str | None = None
    availability_zone: str | None = None
    volume_type: str | None = None
    device: str | None = None  # volume restores: pick by original device ...
    volume_id: str | None = None  # ... or by original volume id
    dry_run: bool = False
    # source "archive": RestoreObject tier, and how often to look whether the packs are back
    # (default by tier: retrievals take hours; the lab's take a few polls).
    retrieval_tier: str = "Standard"
    retrieval_poll_seconds: float | None = None


class RestoreVolumePlan(BaseModel):
    device: str
    source_volume_id: str
    size_gib: int
    volume_type: str = "gp3"
    iops: int | None = None
    throughput: int | None = None
    snapshot_id: str | None = None  # snapshot path: the (replica) snapshot in the target
    record_index: int | None = None  # backup path: the volume record in the restore point
    encrypted: bool = False
    kms_key_id: str | None = None


class RestorePlan(BaseModel):
    restore_id: str
    kind: RestoreKind
    source: RestoreSource
    repository: str | None = None
    backup_id: str | None = None
    region: str  # the target
    role_arn: str | None = None  # the target account
    availability_zone: str
    subnet_id: str | None = None
    instance_type: str | None = None
    root_device: str | None = None
    instance_tags: dict[str, str] = Field(default_factory=dict)
    volumes: list[RestoreVolumePlan]
    checks: list[str] = Field(default_factory=list)
    # Set when the catalog chose where to read (the id alone was given): which source and why.
    source_reason: str | None = None


class RetrievalInput(BaseModel):
    repository: str
    restore_point_id: str
    tier: str = "Standard"
    request: bool = True  # RestoreObject the packs still archived (idempotent)


class RetrievalOutput(BaseModel):
    packs: int
    readable: int
    in_progress: int
    archived: int
    requested: int
    ready: bool


class PlanRestoreInput(BaseModel):
    restore_id: str
    request: RestoreInput


class RestoreSnapshotInput(BaseModel):
    plan: RestorePlan
    volume: RestoreVolumePlan


class RestoreSnapshotOutput(BaseModel):
    snapshot_id: str
    blocks_written: int
    bytes_written: int


class FinishRestoreInput(BaseModel):
    plan: RestorePlan
    snapshot_ids: dict[str, str]  # device -> snapshot id in the target


class RestoredVolume(BaseModel):
    device: str
    volume_id: str
    source_volume_id: str


class FinishRestoreOutput(BaseModel):
    instance_id: str | None = None
    volumes: list[RestoredVolume] = Field(default_factory=list)


class CleanupRestoreInput(BaseModel):
    restore_id: str
    region: str
    role_arn: str | None = None
    succeeded: bool


class CleanupRestoreOutput(BaseModel):
    snapshots_deleted: list[str] = Field(default_factory=list)
    volumes_deleted: list[str] = Field(default_factory=list)
    instances_terminated: list[str] = Field(default_factory=list)


class RestoreOutput(BaseModel):
    status: Literal["completed", "dry-run ok"]
    kind: RestoreKind
    source: RestoreSource | None = None
    region: str | None = None
    instance_id: str | None = None
    volumes: list[RestoredVolume] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    source_reason: str | None = None  # when the catalog chose the source: which and why
    bytes_written: int = 0
    retrieval_seconds: float | None = None  # source archive: how long the packs took to return

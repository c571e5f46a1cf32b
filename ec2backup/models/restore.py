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
    # Backup and archive sources: the restore worker (default: sized by the data, in the
    # restore's subnet or the zone's default subnet).
    worker_instance_type: str | None = None
    worker_subnet_id: str | None = None


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
    # What an image of the instance must say for it to boot again (RegisterImage): x86_64 |
    # arm64, ENA support, legacy-bios | uefi.
    architecture: str = "x86_64"
    ena_support: bool | None = None
    boot_mode: str | None = None
    instance_tags: dict[str, str] = Field(default_factory=dict)
    volumes: list[RestoreVolumePlan]
    checks: list[str] = Field(default_factory=list)
    # Set when the catalog chose where to read (the id alone was given): which source and why.
    source_reason: str | None = None
    # Snapshots of the set that have no replica in the target yet and are (or, when the plan
    # was asked not to copy, are to be) copied there: the slots of the target's copy budget
    # the restore takes first (ec2backup.budget.COPY_SNAPSHOT).
    copies_needed: int = 0
    # Backup and archive sources: the restore worker's password secret (in the target).
    secret_name: str | None = None
    worker_instance_type: str = "c5.large"
    worker_subnet_id: str | None = None
    heartbeat_timeout_seconds: float = 60.0
    boot_timeout_seconds: float = 600.0
    # How much a restore worker writes between durable checkpoints ([performance]).
    checkpoint_mib: int = 256


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
    # False: plan without copying a snapshot set into the target (`copies_needed` says how
    # many copies it would make); the workflow takes copy slots, then plans again copying at
    # most `max_copies` at once.
    copy_missing: bool = True
    max_copies: int = 20


class ProvisionRestoreWorkerInput(BaseModel):
    plan: RestorePlan
    attempt: int = 0


class RestoreWorkerVolume(BaseModel):
    device: str  # the restored volume's device (the plan's)
    volume_id: str  # the worker's empty volume that receives the blocks
    worker_device: str  # where it is attached on the worker


class RestoreWorker(BaseModel):
    instance_id: str
    task_queue: str
    volumes: list[RestoreWorkerVolume]


class RestoreCheckpoint(BaseModel):
    """How far a volume's write got, durably (fsynced before it was reported): every stored
    block below `next_block` is on the volume. In the agent's heartbeats and in its failures,
    so the workflow can hand it to the next attempt (on this worker or a new one the volume
    is re-attached to)."""

    volume_id: str
    next_block: int
    blocks_written: int
    bytes_written: int


class WriteVolumeInput(BaseModel):
    """Agent: write one volume record of a restore point onto an attached device."""

    restore_id: str
    repository: str
    secret_name: str
    secret_region: str
    backup_id: str
    record_index: int
    device: str  # the plan's device (for messages)
    worker_device: str
    volume_id: str  # the worker volume the device must be
    size_gib: int
    # Where an earlier write of this very volume got to (durably): this one goes on from there.
    resume: RestoreCheckpoint | None = None
    checkpoint_mib: int = 256


class WriteVolumeProgress(BaseModel):
    """The agent's heartbeat details, and the details of its failure (checkpoint only)."""

    blocks_written: int = 0
    bytes_written: int = 0
    checkpoint: RestoreCheckpoint | None = None


class WriteVolumeOutput(BaseModel):
    blocks_written: int
    bytes_written: int
    resumed_from_block: int = 0  # 0: written from the start


class SnapshotWorkerVolumesInput(BaseModel):
    plan: RestorePlan
    worker: RestoreWorker


class SnapshotWorkerVolumesOutput(BaseModel):
    snapshot_ids: dict[str, str]  # device -> temporary snapshot of the written volume


class ReleaseRestoreWorkerInput(BaseModel):
    restore_id: str
    region: str
    role_arn: str | None = None
    secret_name: str | None = None
    only_instance_id: str | None = None
    # Let only the instance go (a lost worker): its volumes stay for the next worker, which
    # goes on writing them from their checkpoints.
    keep_volumes: bool = False


class ReleaseRestoreWorkerOutput(BaseModel):
    instances_terminated: list[str] = Field(default_factory=list)
    volumes_deleted: list[str] = Field(default_factory=list)


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
    images_deregistered: list[str] = Field(default_factory=list)
    # temporary snapshots an image not made by this restore still uses: left, reported
    snapshots_in_use: list[str] = Field(default_factory=list)
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
    # Backup sources: the restore workers provisioned (more than 1: lost ones were replaced),
    # and the devices whose write went on from a checkpoint (device -> first block written).
    workers_used: int = 0
    resumed_from_blocks: dict[str, int] = Field(default_factory=dict)

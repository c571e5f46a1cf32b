"""Pydantic models: one input and one output type per workflow, activity, signal and query.

Payloads through Temporal stay small (ids, cursors, counters); block lists and maps live in
the repository. The workflow input is what `temporal workflow start --input '{...}'` sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

Placement = Literal["backup", "production", "auto"]


# ---- BackupSession workflow (the contract) -----------------------------------------------------
class ReplicationSpec(BaseModel):
    region: str
    account_role_arn: str | None = None
    kms_key_id: str | None = None


class WorkerSpec(BaseModel):
    placement: Placement = "backup"
    subnet_id: str | None = None
    instance_type: str | None = None


class ImageBackupSpec(BaseModel):
    repository: str
    worker: WorkerSpec = Field(default_factory=WorkerSpec)


class VolumeProgress(BaseModel):
    volume_id: str
    device: str
    blocks_total: int = 0
    blocks_done: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0


class VolumeCounters(BaseModel):
    volume_id: str
    device: str
    blocks_listed: int = 0
    blocks_read: int = 0
    bytes_read: int = 0
    bytes_stored: int = 0
    cbt_used: bool = False
    cbt_reason: str = ""


class SessionCarry(BaseModel):
    """State carried through continue-as-new (resources and cursors survive it)."""

    snapshot_set: SnapshotSet | None = None
    replica_ids: list[str] = Field(default_factory=list)
    plan: ImagePlan | None = None
    worker: WorkerHandle | None = None
    cursors: dict[str, int] = Field(default_factory=dict)  # source volume id -> next block
    volumes: list[VolumeCounters] = Field(default_factory=list)
    workers_provisioned: int = 0


class BackupSessionInput(BaseModel):
    instance_id: str
    region: str
    account_role_arn: str | None = None
    replication: ReplicationSpec | None = None
    image_backup: ImageBackupSpec | None = None
    policy_name: str = "adhoc"
    # The restore point's nominal time (snapshot tags, restore point, retention age). Default:
    # when the session started. Given explicitly by back-dated runs and simulated-days tests.
    as_of: datetime | None = None
    carry: SessionCarry | None = None  # internal: set by continue-as-new


class BackupSessionOutput(BaseModel):
    status: str
    snapshot_set_id: str | None = None
    snapshot_ids: list[str] = Field(default_factory=list)
    replica_ids: list[str] = Field(default_factory=list)
    restore_point_id: str | None = None
    placement: str | None = None
    placement_reason: str | None = None
    workers_provisioned: int = 0
    volumes: list[VolumeCounters] = Field(default_factory=list)


class PauseInput(BaseModel):
    reason: str = ""


class ResumeInput(BaseModel):
    pass


class ProgressInput(BaseModel):
    pass


class SessionProgress(BaseModel):
    phase: str
    paused: bool
    worker_instance_id: str | None = None
    volumes: list[VolumeProgress] = Field(default_factory=list)


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
    subnet_id: str | None = None
    instance_tags: dict[str, str] = Field(default_factory=dict)
    created: datetime | None = None  # the set's nominal time (its tags say the same)


class SnapshotInstanceInput(BaseModel):
    session_id: str
    instance_id: str
    region: str
    account_role_arn: str | None = None
    policy_name: str = "adhoc"
    created: datetime | None = None  # nominal time recorded in the tags (default: now)


class WaitSnapshotsInput(BaseModel):
    region: str
    account_role_arn: str | None = None
    snapshot_ids: list[str]


class WaitSnapshotsOutput(BaseModel):
    completed: list[str]


class ReplicateInput(BaseModel):
    session_id: str
    snapshot_set: SnapshotSet
    target: ReplicationSpec


class ReplicateOutput(BaseModel):
    replica_ids: list[str]
    region: str
    account: str


# ---- image-level backup -------------------------------------------------------------------------
class VolumePlan(BaseModel):
    source_volume_id: str
    snapshot_id: str
    device: str  # the source instance's device name (restores re-create it)
    worker_device: str  # where the worker sees the volume copy
    size_gib: int
    volume_type: str
    iops: int | None = None
    throughput: int | None = None
    parent_snapshot_id: str | None = None  # CBT base, when usable
    parent_restore_point_id: str | None = None
    cbt_reason: str = ""
    blocks_total: int
    copies: int = 1
    worker_devices: list[str] = Field(default_factory=list)  # one per copy


class ImagePlan(BaseModel):
    repository: str
    placement: Literal["backup", "production"]
    placement_reason: str
    worker_role_arn: str | None  # account the worker runs in (None = the backup account)
    snapshot_role_arn: str | None  # account owning the snapshots (for EBS direct listing)
    region: str
    availability_zone: str
    subnet_id: str | None = None
    instance_type: str
    range_blocks: int
    volumes: list[VolumePlan]
    secret_name: str
    # Dead-host detection for transfer ranges (set by the orchestrator's configuration).
    heartbeat_timeout_seconds: float = 60.0
    boot_timeout_seconds: float = 600.0


class PrepareImageInput(BaseModel):
    session_id: str
    snapshot_set: SnapshotSet
    spec: ImageBackupSpec


class WorkerVolume(BaseModel):
    source_volume_id: str
    volume_id: str
    device: str


class WorkerHandle(BaseModel):
    instance_id: str
    task_queue: str
    region: str
    role_arn: str | None = None
    volumes: list[WorkerVolume] = Field(default_factory=list)


class ProvisionWorkerInput(BaseModel):
    session_id: str
    plan: ImagePlan
    attempt: int = 0  # a new attempt after a lost host gets a new ClientToken


class ReleaseWorkerInput(BaseModel):
    session_id: str
    region: str
    role_arn: str | None = None
    secret_name: str | None = None
    only_instance_id: str | None = None  # release one lost worker, keep the session's others


class ReleaseWorkerOutput(BaseModel):
    instances_terminated: list[str] = Field(default_factory=list)
    volumes_deleted: list[str] = Field(default_factory=list)


class TransferRangeInput(BaseModel):
    session_id: str
    repository: str
    secret_name: str
    secret_region: str
    snapshot_role_arn: str | None
    region: str
    volume: VolumePlan
    worker_device: str
    start_block: int
    end_block: int
    cursor: int  # resume point within [start_block, end_block)
    last_range: bool


class TransferRangeOutput(BaseModel):
    cursor: int
    blocks_listed: int
    blocks_read: int
    bytes_read: int
    bytes_stored: int
    stopped: bool = False  # paused before end_block; `cursor` is where to go on


class CommitRestorePointInput(BaseModel):
    session_id: str
    repository: str
    snapshot_set: SnapshotSet
    plan: ImagePlan
    policy_name: str


class CommitRestorePointOutput(BaseModel):
    restore_point_id: str


def _backup_account_only() -> list[str | None]:
    return [None]


class JanitorInput(BaseModel):
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"])
    role_arns: list[str | None] = Field(default_factory=_backup_account_only)


class JanitorOutput(BaseModel):
    instances_terminated: list[str] = Field(default_factory=list)
    volumes_deleted: list[str] = Field(default_factory=list)
    secrets_deleted: list[str] = Field(default_factory=list)
    sessions_checked: int = 0


SessionCarry.model_rebuild()


# ---- Restore workflow ---------------------------------------------------------------------------
RestoreKind = Literal["instance", "volume"]
RestoreSource = Literal["snapshot", "backup", "archive"]


class RestoreInput(BaseModel):
    kind: RestoreKind
    restore_point_id: str  # a snapshot set id (set-...) or a repository restore point id
    source: RestoreSource | None = None  # default: what the id names
    repository: str | None = None  # needed for backups
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
    status: str
    kind: RestoreKind
    source: RestoreSource | None = None
    region: str | None = None
    instance_id: str | None = None
    volumes: list[RestoredVolume] = Field(default_factory=list)
    checks: list[str] = Field(default_factory=list)
    bytes_written: int = 0
    retrieval_seconds: float | None = None  # source archive: how long the packs took to return


# ---- BackupPolicy workflow ----------------------------------------------------------------------
class DiscoverInput(BaseModel):
    policy: dict[str, Any]  # a validated ec2backup.policy.Policy, as JSON


class DiscoveredInstance(BaseModel):
    instance_id: str
    region: str
    account_role_arn: str | None = None


class DiscoverOutput(BaseModel):
    instances: list[DiscoveredInstance]
    notes: list[str] = Field(default_factory=list)


class InstanceOutcome(BaseModel):
    instance_id: str
    region: str
    account_role_arn: str | None = None
    session_id: str | None = None
    status: str  # pending | running | completed | failed | canceled
    restore_point_id: str | None = None
    snapshot_set_id: str | None = None
    error: str | None = None
    bytes_read: int = 0
    bytes_stored: int = 0
    seconds: float | None = None  # the session's wall time, once it ended


class BackupPolicyOutput(BaseModel):
    """A policy run's result, and (query `report`) its state while it runs."""

    policy: str
    phase: str = "done"  # discovering | backing up | retention | done
    paused: bool = False
    instances: list[InstanceOutcome] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    retention: RetentionOutput | None = None


# ---- retention ---------------------------------------------------------------------------------
class RetentionInput(BaseModel):
    policy: dict[str, Any]  # a validated ec2backup.policy.Policy, as JSON
    now: datetime | None = None  # retention's "today"; default: the workflow's now
    dry_run: bool = False


class RetentionOutput(BaseModel):
    """What retention deleted (or, with dry_run, would delete) and what it kept on purpose."""

    policy: str
    now: datetime
    dry_run: bool = False
    deleted_snapshot_sets: list[str] = Field(default_factory=list)
    deleted_snapshots: list[str] = Field(default_factory=list)
    deleted_replica_sets: list[str] = Field(default_factory=list)
    deleted_replicas: list[str] = Field(default_factory=list)
    kept_snapshot_sets: list[str] = Field(default_factory=list)
    kept_replica_sets: list[str] = Field(default_factory=list)
    cbt_bases: list[str] = Field(default_factory=list)  # snapshots kept as CBT bases
    forgotten_restore_points: list[str] = Field(default_factory=list)
    kept_restore_points: list[str] = Field(default_factory=list)
    pruned_bytes: int = 0
    notes: list[str] = Field(default_factory=list)


BackupPolicyOutput.model_rebuild()


# ---- Archive workflow ---------------------------------------------------------------------------
class ArchiveInput(BaseModel):
    restore_point_id: str  # in the hot repository (any unique prefix)
    source_repository: str  # the hot repository URL
    archive_repository: str  # s3://bucket/prefix; created (archive class, large packs) if absent
    storage_class: str | None = None  # GLACIER | DEEP_ARCHIVE; default: the archive's, or GLACIER
    policy_name: str = "adhoc"


class PlanArchiveInput(BaseModel):
    archive_id: str  # the workflow id: tags the worker, names its secret
    request: ArchiveInput


class ArchivePlan(BaseModel):
    restore_point_id: str  # the full hot restore point id
    existing_archive_id: str | None = None  # already archived: nothing to copy
    storage_class: str
    worker: ImagePlan | None = None  # a worker without volumes, in the archive's Region


class ArchiveCopyInput(BaseModel):
    archive_id: str
    source_repository: str
    archive_repository: str
    restore_point_id: str
    secret_name: str
    secret_region: str


class ArchiveCopyOutput(BaseModel):
    archive_restore_point_id: str
    already_archived: bool
    blocks_copied: int = 0
    bytes_copied: int = 0
    blocks_resumed: int = 0  # made durable by an earlier attempt (a lost worker's checkpoint)


class VerifyArchiveInput(BaseModel):
    archive_repository: str
    archive_restore_point_id: str


class VerifyArchiveOutput(BaseModel):
    packs: int
    pack_bytes: int
    metadata_objects: int
    allocated_bytes: int
    objects_per_gib: float
    storage_classes: dict[str, int] = Field(default_factory=dict)
    problems: list[str] = Field(default_factory=list)


class ArchiveOutput(BaseModel):
    status: str  # completed | already archived
    restore_point_id: str
    archive_restore_point_id: str
    archive_repository: str
    storage_class: str
    already_archived: bool = False
    bytes_copied: int = 0  # by the last worker
    blocks_resumed: int = 0  # from checkpoints of lost workers
    workers_provisioned: int = 0
    worker_instance_id: str | None = None
    verify: VerifyArchiveOutput | None = None


# ---- ArchivePolicy workflow ---------------------------------------------------------------------
class SelectArchiveInput(BaseModel):
    policy: dict[str, Any]  # a validated ec2backup.policy.Policy with an archive section


class ArchiveCandidate(BaseModel):
    restore_point_id: str
    instance_id: str
    time: datetime


class SelectArchiveOutput(BaseModel):
    candidates: list[ArchiveCandidate] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ArchiveRetentionInput(BaseModel):
    policy: dict[str, Any]
    now: datetime | None = None  # default: the workflow's now
    dry_run: bool = False


class ArchiveRetentionOutput(BaseModel):
    now: datetime
    dry_run: bool = False
    forgotten_restore_points: list[str] = Field(default_factory=list)
    kept_restore_points: list[str] = Field(default_factory=list)
    packs_deleted: int = 0
    bytes_freed: int = 0
    # Unreferenced packs still inside the storage class's minimum duration: kept (unless
    # allow_early_deletion), with what deleting them now costs (deleted or not).
    young_packs: int = 0
    young_bytes: int = 0
    early_deletion_cost_usd: float = 0.0
    early_deleted: bool = False
    notes: list[str] = Field(default_factory=list)


class ArchiveOutcome(BaseModel):
    instance_id: str
    restore_point_id: str
    archive_id: str | None = None  # the Archive workflow
    status: str  # pending | running | completed | already archived | failed | canceled
    archive_restore_point_id: str | None = None
    error: str | None = None


class ArchivePolicyOutput(BaseModel):
    policy: str
    phase: str = "done"
    archived: list[ArchiveOutcome] = Field(default_factory=list)
    retention: ArchiveRetentionOutput | None = None
    notes: list[str] = Field(default_factory=list)

"""BackupSession: the workflow's contract, its signals and queries, and its activities'
inputs and outputs.

Payloads through Temporal stay small (ids, cursors, counters); block lists and maps live in
the repository. The workflow input is what `temporal workflow start --input '{...}'` sends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ec2backup.models.snapshots import SnapshotLockSpec, SnapshotSet
from ec2backup.repository.blockmap import PAGE_BLOCKS

Placement = Literal["backup", "production", "auto"]
# Volume copies per source volume a worker may read at once (each one attached device; a
# worker has 21 device names, /dev/sdf-/dev/sdz, for every volume of the instance).
MAX_COPIES = 8


# ---- BackupSession workflow (the contract) -----------------------------------------------------
class ReplicationSpec(BaseModel):
    region: str
    account_role_arn: str | None = None
    kms_key_id: str | None = None


class WorkerSpec(BaseModel):
    placement: Placement = "backup"
    subnet_id: str | None = None
    # The worker's security groups (of the account it runs in); none: the VPC's default group.
    security_group_ids: list[str] = Field(default_factory=list)
    instance_type: str | None = None
    # Copies of each volume the worker reads at once, one writer each (None: by size,
    # ec2backup.workers.plan_volume).
    copies: int | None = Field(default=None, ge=1, le=MAX_COPIES)
    # How volumes are read (ec2backup.readplan): `auto` chooses per volume.
    read: Literal["auto", "attached", "ebs-direct"] = "auto"


class ImageBackupSpec(BaseModel):
    repository: str
    worker: WorkerSpec = Field(default_factory=WorkerSpec)
    # How long the policy's retention may keep the restore point (days): on an Object Lock
    # repository its objects stay locked that long, plus the repository's margin.
    keep_days: int | None = None
    # The policy's `image_backup.object_lock`: the repository must lock at least in this mode.
    object_lock: Literal["governance", "compliance"] | None = None


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
    read: str = "attached"  # VolumePlan.read and read_reason: how it was read, and why
    read_reason: str = ""
    cbt_reason: str = ""


class SessionCarry(BaseModel):
    """State carried through continue-as-new (resources and cursors survive it)."""

    snapshot_set: SnapshotSet | None = None
    replica_ids: list[str] = Field(default_factory=list)  # every target's, in target order
    replicas: list[ReplicateOutput] = Field(default_factory=list)  # one per finished target
    plan: ImagePlan | None = None
    worker: WorkerHandle | None = None
    cursors: dict[str, int] = Field(default_factory=dict)  # source volume id -> next block
    volumes: list[VolumeCounters] = Field(default_factory=list)
    workers_provisioned: int = 0
    # The account whose EBS direct budget this session holds a share of (ec2backup.budget).
    budget_account: str | None = None
    # The list APIs (ec2backup.budget.LIST_APIS) whose budgets this session holds a share of,
    # and in which account: given back with the GetSnapshotBlock share.
    list_budgets: dict[str, str] = Field(default_factory=dict)  # API -> account


class BackupSessionInput(BaseModel):
    instance_id: str
    region: str
    account_role_arn: str | None = None
    # Replication targets: `replication` is one (what `ec2backup backup --replicate-to` sends),
    # `replications` any number (what a policy run sends: every target of the policy). A
    # session copies its set to each, in this order: `replication` first.
    replication: ReplicationSpec | None = None
    replications: list[ReplicationSpec] = Field(default_factory=list)
    image_backup: ImageBackupSpec | None = None
    policy_name: str = "adhoc"
    # The restore point's nominal time (snapshot tags, restore point, retention age). Default:
    # when the session started. Given explicitly by back-dated runs and simulated-days tests.
    as_of: datetime | None = None
    # Lock every snapshot of the set (EBS snapshot lock) once it is completed (policy
    # `snapshots.lock`).
    snapshot_lock: SnapshotLockSpec | None = None
    carry: SessionCarry | None = None  # internal: set by continue-as-new

    def replication_targets(self) -> list[ReplicationSpec]:
        return ([self.replication] if self.replication else []) + list(self.replications)


class BackupSessionOutput(BaseModel):
    status: Literal["completed"]  # a session that did not complete fails instead
    snapshot_set_id: str | None = None
    snapshot_ids: list[str] = Field(default_factory=list)
    replica_ids: list[str] = Field(default_factory=list)  # every target's, in target order
    replicas: list[ReplicateOutput] = Field(default_factory=list)  # per target
    restore_point_id: str | None = None
    # The ransomware signal on that restore point (clean | anomaly | no-baseline), its reasons,
    # and the instance's newest clean restore point (ec2backup.anomaly).
    anomaly: str | None = None
    anomaly_reasons: list[str] = Field(default_factory=list)
    last_clean_restore_point_id: str | None = None
    placement: str | None = None
    placement_reason: str | None = None
    workers_provisioned: int = 0
    volumes: list[VolumeCounters] = Field(default_factory=list)


class ProgressInput(BaseModel):
    pass


class SessionProgress(BaseModel):
    phase: str
    paused: bool
    worker_instance_id: str | None = None
    volumes: list[VolumeProgress] = Field(default_factory=list)


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
    lock: SnapshotLockSpec | None = None  # lock each one once completed


class WaitSnapshotsOutput(BaseModel):
    completed: list[str]
    locked_until: datetime | None = None  # when the snapshots were locked: the lock's end


class ReplicateInput(BaseModel):
    session_id: str
    snapshot_set: SnapshotSet
    target: ReplicationSpec
    # This session's share of the destination's copy slots (the CopySnapshot budget).
    max_concurrent: int = Field(default=20, ge=1)


class ReplicateOutput(BaseModel):
    """One target's replica set: the copies in the source set's member order."""

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
    # Writers reading this volume at once, each its own span of whole map pages with its own
    # checkpoint, merged into one block map at commit (`spans`); 1: one writer (plans made
    # before streams existed have 1).
    streams: int = 1
    # attached: read from the worker's copies; ebs-direct: GetSnapshotBlock, no copy
    # (ec2backup.readplan), and why; what the choice counted.
    read: Literal["attached", "ebs-direct"] = "attached"
    read_reason: str = ""
    blocks_to_read: int | None = None

    def spans(self) -> list[Stream]:
        """The volume's streams: contiguous spans of whole block-map pages (so each writer
        owns its pages), stream k reading copy k (round robin over the copies)."""
        if self.streams <= 1:
            return [Stream(key=self.source_volume_id, start=0, end=self.blocks_total)]
        pages = -(-self.blocks_total // PAGE_BLOCKS)
        per = -(-pages // self.streams)
        out = []
        for k in range(self.streams):
            start, end = k * per * PAGE_BLOCKS, min(self.blocks_total, (k + 1) * per * PAGE_BLOCKS)
            if start >= end:
                break
            device = (
                self.worker_devices[k % len(self.worker_devices)]
                if self.worker_devices
                else self.worker_device
            )
            out.append(
                Stream(key=f"{self.source_volume_id}#{k}", start=start, end=end, device=device)
            )
        return out


class Stream(BaseModel):
    """One writer's share of a volume (VolumePlan.spans)."""

    key: str  # its cursor and checkpoint key: the volume id (one stream), or "<volume id>#<k>"
    start: int
    end: int
    device: str | None = None  # the copy it reads (None: the volume's own choice per range)


class ImagePlan(BaseModel):
    repository: str
    placement: Literal["backup", "production"]
    placement_reason: str
    worker_role_arn: str | None  # account the worker runs in (None = the backup account)
    snapshot_role_arn: str | None  # account owning the snapshots (for EBS direct listing)
    region: str
    availability_zone: str
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(default_factory=list)
    instance_type: str
    range_blocks: int
    volumes: list[VolumePlan]
    secret_name: str
    keep_days: int | None = None  # ImageBackupSpec.keep_days
    # GetSnapshotBlock calls per second the session asks of its account's budget for EBS
    # direct reads ([performance] ebs_direct_session_rps).
    ebs_direct_rps: float = 500.0
    # Dead-host detection for transfer ranges (set by the orchestrator's configuration).
    heartbeat_timeout_seconds: float = 60.0
    boot_timeout_seconds: float = 600.0


class PrepareImageInput(BaseModel):
    session_id: str
    snapshot_set: SnapshotSet
    spec: ImageBackupSpec
    # The session's share of each list API's budget (ec2backup.budget), list calls per
    # second; an API not named here is not paced.
    list_rps: dict[str, float] = Field(default_factory=dict)


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
    # The session is over: drop its checkpoints in this repository (they pin the data of an
    # uncommitted session); one per source volume. Not for a lost worker's release.
    repository: str | None = None
    checkpoint_volumes: list[str] = Field(default_factory=list)


class ReleaseWorkerOutput(BaseModel):
    checkpoints_deleted: int = 0
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
    # The worker's copy of the volume: the agent finds its device by this id (NVMe by-id).
    worker_volume_id: str | None = None
    start_block: int
    end_block: int
    cursor: int  # resume point within [start_block, end_block)
    # The stream's checkpoint key and the end of its span (VolumePlan.spans); None: the volume
    # is one stream (its key is the volume id, its span the whole volume).
    stream: str | None = None
    span_end: int | None = None
    # EBS direct reads: GetSnapshotBlock calls per second this range may make (its session's
    # share of the account's budget, ec2backup.budget); None: unpaced. While it runs the agent
    # follows the share as it changes: `budget_fraction` of the session's share in the budget
    # workflow `budget_id`.
    get_rps: float | None = None
    budget_id: str | None = None
    budget_fraction: float = 1.0
    # This range's part of the session's share of its list API's budget (ListChangedBlocks
    # or ListSnapshotBlocks, ec2backup.budget), calls per second; None: unpaced.
    list_rps: float | None = None
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


class CommittedVolume(BaseModel):
    """What the committed restore point records of one volume (its VolumeStats)."""

    volume_id: str
    blocks_listed: int  # 0: a restore point written before it was recorded
    blocks_read: int
    bytes_read: int
    bytes_stored: int


class CommitRestorePointOutput(BaseModel):
    restore_point_id: str
    anomaly: str | None = None  # the ransomware signal's verdict (BackupSessionOutput.anomaly)
    anomaly_reasons: list[str] = Field(default_factory=list)
    last_clean_restore_point_id: str | None = None
    # The restore point's own counts; the session reports these (not what its ranges returned:
    # a range attempt lost after a checkpoint returned nothing for what it made durable).
    volumes: list[CommittedVolume] = Field(default_factory=list)

"""Archive and ArchivePolicy: contracts and activity inputs and outputs."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ec2backup.models.session import ImagePlan
from ec2backup.policy import Policy


# ---- Archive workflow ---------------------------------------------------------------------------
class ArchiveInput(BaseModel):
    restore_point_id: str  # in the hot repository (any unique prefix)
    # The hot repository URL; default: found by the catalog from the restore point id.
    source_repository: str | None = None
    archive_repository: str  # s3://bucket/prefix; created (archive class, large packs) if absent
    storage_class: str | None = None  # GLACIER | DEEP_ARCHIVE; default: the archive's, or GLACIER
    policy_name: str = "adhoc"


class PlanArchiveInput(BaseModel):
    archive_id: str  # the workflow id: tags the worker, names its secret
    request: ArchiveInput


class ArchivePlan(BaseModel):
    restore_point_id: str  # the full hot restore point id
    source_repository: str  # where it is (as given, or found by the catalog)
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
    status: Literal["completed", "already archived"]
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
    policy: Policy  # with an archive section


class ArchiveCandidate(BaseModel):
    restore_point_id: str
    instance_id: str
    time: datetime


class SelectArchiveOutput(BaseModel):
    candidates: list[ArchiveCandidate] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


class ArchiveRetentionInput(BaseModel):
    policy: Policy
    now: datetime | None = None  # default: the workflow's now
    dry_run: bool = False


class ArchiveRetentionOutput(BaseModel):
    now: datetime
    dry_run: bool = False
    forgotten_restore_points: list[str] = Field(default_factory=list)
    kept_restore_points: list[str] = Field(default_factory=list)
    packs_deleted: int = 0  # what an earlier prune marked, deleted now
    bytes_freed: int = 0
    packs_marked: int = 0  # marked by this prune: deleted by a later one after the grace period
    # Unreferenced packs still inside the storage class's minimum duration: kept (unless
    # allow_early_deletion), with what deleting them now costs (deleted or not).
    young_packs: int = 0
    young_bytes: int = 0
    early_deletion_cost_usd: float = 0.0
    early_deleted: bool = False
    notes: list[str] = Field(default_factory=list)


# One restore point in an ArchivePolicy run.
ArchiveStatus = Literal["pending", "running", "completed", "already archived", "failed", "canceled"]


class ArchiveOutcome(BaseModel):
    instance_id: str
    restore_point_id: str
    archive_id: str | None = None  # the Archive workflow
    status: ArchiveStatus
    archive_restore_point_id: str | None = None
    error: str | None = None


class ArchivePolicyOutput(BaseModel):
    policy: str
    phase: Literal["selecting", "archiving", "retention", "done"] = "done"
    archived: list[ArchiveOutcome] = Field(default_factory=list)
    retention: ArchiveRetentionOutput | None = None
    notes: list[str] = Field(default_factory=list)

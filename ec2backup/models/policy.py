"""BackupPolicy and Retention: a policy run's report, discovery and retention."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from ec2backup.models.authorization import Outcome
from ec2backup.policy import Policy

# An instance's outcome in a policy run (and in `session report`).
OutcomeStatus = Literal["pending", "running", "completed", "failed", "canceled"]
# Where a policy run is; `unknown` when a closed run's report could not be read back.
PolicyPhase = Literal["discovering", "backing up", "retention", "done", "unknown"]


# ---- BackupPolicy workflow ----------------------------------------------------------------------
class DiscoverInput(BaseModel):
    policy: Policy


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
    status: OutcomeStatus
    restore_point_id: str | None = None
    snapshot_set_id: str | None = None
    error: str | None = None
    bytes_read: int = 0
    bytes_stored: int = 0
    seconds: float | None = None  # the session's wall time, once it ended
    # The ransomware signal on the session's restore point (BackupSessionOutput.anomaly).
    anomaly: str | None = None
    anomaly_reasons: list[str] = Field(default_factory=list)
    last_clean_restore_point_id: str | None = None


class BackupPolicyOutput(BaseModel):
    """A policy run's result, and (query `report`) its state while it runs."""

    policy: str
    phase: PolicyPhase = "done"
    paused: bool = False
    instances: list[InstanceOutcome] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    retention: RetentionOutput | None = None
    # Once the sessions ended: succeeded (every instance), partial (some), failed (none).
    outcome: Outcome | None = None


class NotifyInput(BaseModel):
    topic_arn: str
    outcome: Outcome
    run_id: str  # the BackupPolicy workflow id
    report: BackupPolicyOutput


class NotifyOutput(BaseModel):
    message_id: str


# ---- reactions to a ransomware-signal anomaly (policy `on_anomaly`) -----------------------------
class LockLastCleanInput(BaseModel):
    policy: Policy
    instance: InstanceOutcome  # the flagged session's outcome
    now: datetime  # the workflow's now: the hold lasts policy.anomaly_hold_days from it


class LockLastCleanOutput(BaseModel):
    restore_point_id: str | None = None  # the last clean point (None: the instance has none)
    until: datetime | None = None
    objects_locked: int = 0  # Object Lock: objects whose retention was set or extended now
    snapshots_locked: list[str] = Field(default_factory=list)  # its snapshot set's, now locked
    notes: list[str] = Field(default_factory=list)


class NotifyAnomalyInput(BaseModel):
    topic_arn: str
    policy: str
    run_id: str
    instance: InstanceOutcome
    held: LockLastCleanOutput | None = None  # what lock-last-clean did, when it ran first


class NotifyAnomalyOutput(BaseModel):
    message_id: str


# ---- retention ---------------------------------------------------------------------------------
class RetentionInput(BaseModel):
    policy: Policy
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
    # Expired sets kept because an EBS snapshot lock holds one of their snapshots: set id ->
    # when the last of those locks ends (a later run deletes the set then).
    locked_snapshot_sets: dict[str, datetime] = Field(default_factory=dict)
    cbt_bases: list[str] = Field(default_factory=list)  # snapshots kept as CBT bases
    forgotten_restore_points: list[str] = Field(default_factory=list)
    kept_restore_points: list[str] = Field(default_factory=list)
    # Restore points `on_anomaly: lock-last-clean` holds (an instance's last clean point and
    # the first anomaly after it): id -> until when (that anomaly + anomaly_hold_days).
    held_restore_points: dict[str, datetime] = Field(default_factory=dict)
    pruned_bytes: int = 0  # deleted by this run's prune (what an earlier prune marked)
    prune_marked_bytes: int = 0  # marked by this run's prune: deleted after the grace period
    notes: list[str] = Field(default_factory=list)


BackupPolicyOutput.model_rebuild()
NotifyInput.model_rebuild()
LockLastCleanInput.model_rebuild()
NotifyAnomalyInput.model_rebuild()

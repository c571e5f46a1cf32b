"""Backup policies: what to protect, when, how long to keep it, and where copies go.

A policy is a YAML or JSON file validated by `Policy` (pydantic, unknown fields refused).
`load_policy` reports the first problem as one line naming the field and, for YAML, the line.
The schema (`ec2backup policy schema`) is `Policy.model_json_schema()`.

Built on it: `ec2backup.schedules` (a Temporal Schedule per policy), the `BackupPolicy`
workflow, and `ec2backup.retention`.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import boto3
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from temporalio import workflow

from ec2backup.errors import UserError
from ec2backup.models.session import MAX_COPIES
from ec2backup.models.snapshots import SnapshotLockSpec

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_TIME_RE = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")
# A cron field: *, a number, a range, a list, with an optional step; names for months/days.
_CRON_FIELD = re.compile(
    r"^(\*|[0-9a-z]+(-[0-9a-z]+)?)(/\d+)?(,(\*|[0-9a-z]+(-[0-9a-z]+)?)(/\d+)?)*$"
)
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]
_DAYS = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class PolicyError(UserError):
    pass


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _in_workflow() -> bool:
    """Inside workflow code (a `Policy` is the typed input of BackupPolicy/ArchivePolicy)
    checks that read files (botocore's Region list, the time zone database) are skipped: they
    would be I/O in a workflow, and the policy was checked by `policy apply` and is checked
    again by every activity that receives it."""
    return workflow.unsafe.in_sandbox()


@lru_cache(maxsize=1)
def known_regions() -> frozenset[str]:
    return frozenset(boto3.Session().get_available_regions("ec2"))


def _check_region(value: str) -> str:
    if _in_workflow():
        return value
    if value not in known_regions():
        raise ValueError(f"unknown Region '{value}'")
    return value


def _check_role(value: str) -> str:
    if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/[\w+=,.@/-]+$", value):
        raise ValueError(f"'{value}' is not an IAM role ARN")
    return value


def check_cron(expression: str) -> str:
    fields = expression.split()
    if len(fields) != 5:
        raise ValueError(f"cron '{expression}' must have 5 fields (minute hour day month weekday)")
    for text, (low, high) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(text.lower()):
            raise ValueError(f"cron field '{text}' is not valid")
        for number in re.findall(r"\d+", text.split("/")[0]):
            if not low <= int(number) <= high:
                raise ValueError(f"cron field '{text}' is out of range {low}-{high}")
    return expression


def _backup_account_only() -> list[str | None]:
    return [None]


class Selection(_Strict):
    instance_ids: list[str] = Field(default_factory=list)
    tags: dict[str, str] = Field(default_factory=dict, description="all must match")
    regions: list[str] = Field(min_length=1)
    accounts: list[str | None] = Field(
        default_factory=_backup_account_only,
        description="role ARNs of the accounts to search; null = the backup account",
    )

    _regions = field_validator("regions")(lambda cls, v: [_check_region(r) for r in v])

    @field_validator("tags", mode="before")
    @classmethod
    def _tag_values(cls, value: Any) -> Any:
        """YAML reads `env: 2024` or `backup: yes` as a number or a boolean; EC2 tag values are
        strings, so take them as written (`true`, not `True`). Leading zeros are lost by YAML
        itself: quote such values."""
        if not isinstance(value, dict):
            return value
        return {
            k: (str(v).lower() if isinstance(v, bool) else str(v))
            if isinstance(v, int | float)
            else v
            for k, v in value.items()
        }

    @field_validator("accounts")
    @classmethod
    def _accounts(cls, value: list[str | None]) -> list[str | None]:
        return [None if a is None else _check_role(a) for a in value]

    @field_validator("instance_ids")
    @classmethod
    def _ids(cls, value: list[str]) -> list[str]:
        for v in value:
            if not re.match(r"^i-[0-9a-f]{8,17}$", v):
                raise ValueError(f"'{v}' is not an instance id")
        return value

    @model_validator(mode="after")
    def _something(self) -> Selection:
        if not self.instance_ids and not self.tags:
            raise ValueError("select instances by instance_ids and/or tags")
        return self


class Weekly(_Strict):
    days: list[Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]] = Field(min_length=1)
    time: str

    _time = field_validator("time")(lambda cls, v: _check_time(v))


def _check_time(value: str) -> str:
    if not _TIME_RE.match(value):
        raise ValueError(f"'{value}' is not a HH:MM time")
    return value


class Schedule(_Strict):
    cron: str | None = None
    daily: list[str] = Field(default_factory=list, description="HH:MM times")
    weekly: Weekly | None = None
    time_zone: str = "UTC"
    window_minutes: int = Field(
        default=240, ge=15, le=24 * 60, description="a run that has not started by then is skipped"
    )

    _cron = field_validator("cron")(lambda cls, v: v if v is None else check_cron(v))
    _daily = field_validator("daily")(lambda cls, v: [_check_time(t) for t in v])

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, value: str) -> str:
        if _in_workflow():
            return value
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone '{value}'") from exc
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Schedule:
        kinds = [k for k in ("cron", "daily", "weekly") if getattr(self, k)]
        if len(kinds) != 1:
            raise ValueError("give exactly one of cron, daily, weekly")
        return self

    def cron_expressions(self) -> list[str]:
        """The schedule as cron expressions (what a Temporal ScheduleSpec takes)."""
        if self.cron:
            return [self.cron]
        if self.daily:
            return [f"{int(t[3:])} {int(t[:2])} * * *" for t in self.daily]
        assert self.weekly is not None
        days = ",".join(str((_DAYS.index(d) + 1) % 7) for d in self.weekly.days)
        t = self.weekly.time
        return [f"{int(t[3:])} {int(t[:2])} * * {days}"]


class Retention(_Strict):
    count: int | None = Field(default=None, ge=1)
    days: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one(self) -> Retention:
        if (self.count is None) == (self.days is None):
            raise ValueError("give exactly one of count, days")
        return self


class GfsRetention(_Strict):
    daily: int = Field(default=7, ge=0)
    weekly: int = Field(default=4, ge=0)
    monthly: int = Field(default=12, ge=0)
    yearly: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _keeps(self) -> GfsRetention:
        if not (self.daily or self.weekly or self.monthly or self.yearly):
            raise ValueError("retention keeps nothing: give at least one count > 0")
        return self

    def horizon_days(self) -> int:
        """The longest this retention can keep a restore point (its oldest bucket's span):
        how long an Object Lock repository locks what the point needs."""
        return max(self.daily, 7 * self.weekly, 31 * self.monthly, 366 * self.yearly)


class SnapshotPolicy(_Strict):
    retention: Retention
    # EBS snapshot locks on every snapshot of the policy's sets: retention leaves a locked
    # snapshot set alone (and says until when), and nobody can delete it meanwhile.
    lock: SnapshotLockSpec | None = None


class ReplicationTarget(_Strict):
    region: str
    account_role_arn: str | None = None
    kms_key_id: str | None = None
    retention: Retention | None = None

    _region = field_validator("region")(lambda cls, v: _check_region(v))
    _role = field_validator("account_role_arn")(lambda cls, v: v if v is None else _check_role(v))


class Replication(_Strict):
    targets: list[ReplicationTarget] = Field(min_length=1)

    @field_validator("targets")
    @classmethod
    def _distinct(cls, value: list[ReplicationTarget]) -> list[ReplicationTarget]:
        """Two targets in one Region and account would be one replica set (a copy is found
        again by its source snapshot) kept by two rules: refused rather than half applied."""
        seen: set[tuple[str, str | None]] = set()
        for t in value:
            where = (t.region, t.account_role_arn)
            if where in seen:
                account = t.account_role_arn or "the backup account"
                raise ValueError(f"two targets in {t.region} for {account}: give each once")
            seen.add(where)
        return value


class WorkerConfig(_Strict):
    placement: Literal["backup", "production", "auto"] = "auto"
    subnet_id: str | None = None
    security_group_ids: list[str] = Field(
        default_factory=list,
        description="the worker's security groups, in the account the worker runs in "
        "(default: the VPC's default group)",
    )
    instance_type: str | None = None
    copies: int | None = Field(
        default=None,
        ge=1,
        le=MAX_COPIES,
        description="copies of each volume the worker reads in parallel, one writer each "
        "(default: 1, 2 above 2 TiB)",
    )
    read: Literal["auto", "attached", "ebs-direct"] = Field(
        default="auto",
        description="how volumes are read: auto (per volume, the faster of EBS direct and "
        "attached copies), attached, ebs-direct",
    )

    @field_validator("subnet_id")
    @classmethod
    def _subnet(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^subnet-[0-9a-f]{8,17}$", value):
            raise ValueError(f"'{value}' is not a subnet id")
        return value

    @field_validator("security_group_ids")
    @classmethod
    def _groups(cls, value: list[str]) -> list[str]:
        for v in value:
            if not re.match(r"^sg-[0-9a-f]{8,17}$", v):
                raise ValueError(f"'{v}' is not a security group id")
        if len(set(value)) != len(value):
            raise ValueError("a security group is listed twice")
        return value


class ImageBackup(_Strict):
    repository: str = Field(min_length=1, description="s3://bucket/prefix or a directory")
    workers: dict[str, WorkerConfig] = Field(
        default_factory=dict, description="worker configuration per Region"
    )
    retention: GfsRetention = Field(default_factory=lambda: GfsRetention())
    prune_grace_hours: float = Field(
        default=23,
        ge=0,
        description="retention's prune deletes what an earlier prune marked only this many "
        "hours after the marking (two-phase prune)",
    )
    object_lock: Literal["governance", "compliance"] | None = Field(
        default=None,
        description="the repository must be an Object Lock repository (`repo init "
        "--object-lock`) of this mode (compliance also satisfies governance); a session "
        "refuses to write anywhere else",
    )

    @field_validator("workers")
    @classmethod
    def _worker_regions(cls, value: dict[str, WorkerConfig]) -> dict[str, WorkerConfig]:
        for region in value:
            _check_region(region)
        return value


class ArchiveRetention(_Strict):
    monthly: int = Field(default=12, ge=0)
    yearly: int = Field(default=0, ge=0)

    @model_validator(mode="after")
    def _keeps(self) -> ArchiveRetention:
        if not (self.monthly or self.yearly):
            raise ValueError("retention keeps nothing: give monthly and/or yearly > 0")
        return self


class ArchivePolicy(_Strict):
    schedule: Schedule = Field(description="when restore points are archived, e.g. monthly")
    repository: str = Field(description="s3://bucket/prefix of the archive repository")
    storage_class: Literal["GLACIER", "DEEP_ARCHIVE"] = "GLACIER"
    retention: ArchiveRetention = Field(default_factory=lambda: ArchiveRetention())
    allow_early_deletion: bool = Field(
        default=False,
        description="let retention delete packs younger than the storage class's minimum "
        "duration (90 days GLACIER, 180 DEEP_ARCHIVE); the charge is reported either way",
    )
    prune_grace_hours: float = Field(
        default=23,
        ge=0,
        description="the archive's prune deletes what an earlier prune marked only this many "
        "hours after the marking (two-phase prune)",
    )

    @field_validator("repository")
    @classmethod
    def _s3(cls, value: str) -> str:
        if not re.match(r"^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$", value):
            raise ValueError(f"'{value}' is not an s3://bucket/prefix URL (archives live in S3)")
        return value


# A run's outcomes (search attribute `Outcome`; ec2backup.models.authorization.Outcome).
NotifyOutcome = Literal["succeeded", "partial", "failed"]
# By default only what needs a look: a nightly "succeeded" to every subscriber is noise.
DEFAULT_NOTIFY_ON: tuple[NotifyOutcome, ...] = ("failed", "partial")
_SNS_TOPIC_ARN = re.compile(r"^arn:aws[a-z-]*:sns:[a-z]{2}(-[a-z]+)+-\d+:\d{12}:[\w-]{1,256}$")


class Notify(_Strict):
    """One SNS message per policy run with its summary, for the outcomes in `on`."""

    sns_topic_arn: str = Field(description="arn:aws:sns:REGION:ACCOUNT:NAME")
    on: list[NotifyOutcome] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_ON),
        min_length=1,
        description="the run outcomes that publish (default failed and partial)",
    )

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: Any) -> Any:
        """YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true: take it as `on`."""
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data

    @field_validator("sns_topic_arn")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not _SNS_TOPIC_ARN.match(value):
            raise ValueError(f"'{value}' is not an SNS topic ARN")
        return value

    @property
    def topic_region(self) -> str:
        return self.sns_topic_arn.split(":")[3]

    @property
    def topic_account(self) -> str:
        return self.sns_topic_arn.split(":")[4]


# What a policy does when a session's restore point is flagged by the ransomware signal
# (ec2backup.anomaly): `notify` publishes to the policy's SNS topic (`notify.sns_topic_arn`);
# `lock-last-clean` protects the instance's newest clean restore point (ec2backup.reaction).
AnomalyReaction = Literal["notify", "lock-last-clean"]
# How long `lock-last-clean` protects the last clean point after an anomaly: a month to find,
# understand and clean up an intrusion before retention may take the good copy.
DEFAULT_ANOMALY_HOLD_DAYS = 30


class Policy(_Strict):
    name: str
    enabled: bool = True
    priority: int = Field(
        default=0,
        description="an instance selected by several policies is "
        "protected by the highest priority one only",
    )
    concurrency: int = Field(
        default=4, ge=1, le=100, description="backup sessions of one run at a time"
    )
    selection: Selection
    schedule: Schedule
    snapshots: SnapshotPolicy
    replication: Replication | None = None
    image_backup: ImageBackup | None = None
    archive: ArchivePolicy | None = None
    notify: Notify | None = None
    on_anomaly: list[AnomalyReaction] = Field(
        default_factory=list,
        description="reactions to a ransomware-signal anomaly: notify (the notify topic) "
        "and/or lock-last-clean (the instance's last clean restore point, its objects and "
        "its snapshot set are kept and locked for anomaly_hold_days)",
    )
    anomaly_hold_days: int = Field(
        default=DEFAULT_ANOMALY_HOLD_DAYS,
        ge=1,
        le=36_500,
        description="how long lock-last-clean protects the last clean point",
    )

    @field_validator("on_anomaly", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        """`on_anomaly: notify` or a list; `lock_last_clean` is taken for `lock-last-clean`."""
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [v.replace("_", "-") if isinstance(v, str) else v for v in items]
        return value

    @model_validator(mode="after")
    def _archive_needs_backups(self) -> Policy:
        if self.archive is not None and self.image_backup is None:
            raise ValueError("archive copies image-level backups: add an image_backup section")
        if self.on_anomaly and self.image_backup is None:
            raise ValueError(
                "on_anomaly reacts to the ransomware signal of image-level backups: add an "
                "image_backup section"
            )
        if "notify" in self.on_anomaly and self.notify is None:
            raise ValueError("on_anomaly: notify publishes to notify.sns_topic_arn: add it")
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("use lowercase letters, digits and '-' (at most 63)")
        return value


def _node_line(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """The 1-based line of the YAML node at a pydantic error location (or its nearest parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            child = next((v for k, v in node.value if k.value == key), None)
            if child is None:  # e.g. a missing field: point at its parent
                return line
            node = child
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            break
        line = node.start_mark.line + 1
    return line


def load_policy(path: Path) -> Policy:
    """Parse and validate a policy file; PolicyError names the field (and YAML line)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"cannot read {path}: {exc.strerror}") from exc
    node: yaml.Node | None = None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        else:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
            data = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise PolicyError(
            f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
            f"{' '.join(str(exc).split())}"
        ) from exc
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a mapping of fields")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"])
        field = ".".join(str(p) for p in loc) or "policy"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        line = _node_line(node, loc) if node is not None else None
        where = f"{path}:{line}" if line else str(path)
        raise PolicyError(f"{where}: {field}: {message}") from exc

"""The installation configuration: one file an operator writes, read by every command, the
orchestrator and the Janitor.

Where it comes from (the first that exists): `--config PATH` (the CLI sets `EC2BACKUP_CONFIG`),
`$EC2BACKUP_CONFIG`, `~/.config/ec2backup/config.toml`; without any, every key has its default
and the environment alone configures the installation (as before this file existed). TOML, or
YAML when the name ends in `.yaml`/`.yml`. Environment variables override the file:
`EC2BACKUP_<KEY>` for a top-level key (`EC2BACKUP_HOME_REGION=eu-west-1`,
`EC2BACKUP_REGIONS='["eu-west-1","us-east-1"]'`), `EC2BACKUP_<SECTION>__<KEY>` inside a
section (`EC2BACKUP_WORKER__SUBNET_ID=subnet-1`), plus the older single variables listed in
`LEGACY_ENV`. Unknown keys are errors (a typo must not silently fall back to a default); every
error is one line naming the key. docs/deploy.md shows a complete file.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ec2backup.errors import UserError

CONFIG_ENV = "EC2BACKUP_CONFIG"
DEFAULT_CONFIG_PATH = Path("~/.config/ec2backup/config.toml")

# Amazon Linux 2023's public SSM parameters (one per architecture): a stock image every Region
# has, kept patched by AWS, so a worker needs no AMI of ours.
AL2023_PARAMETER = "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-{arch}"
# The instance profile the IAM kit creates for workers (docs/iam.md).
DEFAULT_WORKER_INSTANCE_PROFILE = "ec2backup-worker"
# A worker lives for one session; one that outlives this (an orchestrator outage, a lost
# session) powers itself off and, by its shutdown behaviour, is terminated: it holds keys to
# the repository. 12 h covers a full read of a 16 TiB volume at EBS's ~400 MiB/s.
DEFAULT_WORKER_MAX_LIFETIME_MINUTES = 12 * 60

_ACCOUNT_ID = re.compile(r"^\d{12}$")
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TemporalSettings(_Section):
    """The Temporal connection. The `temporal` CLI's environment configuration applies first
    (`TEMPORAL_*` variables and TOML profiles: ec2backup.temporal); these keys choose the
    profile and fill in what neither names."""

    profile: str | None = Field(default=None, description="profile of the temporal.toml file")
    config_file: str | None = Field(default=None, description="path of the temporal.toml file")
    address: str | None = None
    namespace: str | None = None
    # A Secrets Manager secret (backup account, home Region) with the agents' Temporal
    # credentials: {"api_key": ...} and/or {"tls_client_cert": PEM, "tls_client_key": PEM,
    # "tls_server_ca_cert": PEM, "tls": true}. Agents read it with their instance role; it is
    # never in user-data.
    agent_credentials_secret: str | None = None
    # A KMS key (id, alias or ARN in the home Region) that wraps payload keys made by
    # `ec2backup setup --rotate-payload-key` (ec2backup.payloads); without one they are kept
    # in the installation secret as Secrets Manager encrypts it.
    payload_kms_key: str | None = None


class CodecServerSettings(_Section):
    """`ec2backup codec-server`: decodes payloads for the Temporal Web UI and CLI."""

    port: int = Field(default=8081, ge=1, le=65535)
    # Interface to listen on: loopback by default (whoever reaches it reads every payload).
    host: str = "127.0.0.1"
    # Browser origins allowed to call it (the Web UI's); the dev server's UI by default.
    cors_origins: list[str] = Field(
        default_factory=lambda: ["http://localhost:8233", "http://127.0.0.1:8233"]
    )
    # A bearer token the callers must send (`temporal --codec-auth 'Bearer T'`, the Web UI's
    # codec "pass access token"): given here or, better, as a Secrets Manager secret (home
    # Region) whose value is the token.
    token: str | None = None
    token_secret: str | None = None


class AccountSettings(_Section):
    """A production account: the role the orchestrator assumes there."""

    id: str
    role_arn: str
    external_id: str | None = None
    name: str | None = None

    @field_validator("id")
    @classmethod
    def _account_id(cls, value: str) -> str:
        if not _ACCOUNT_ID.match(value):
            raise ValueError("must be a 12-digit AWS account id")
        return value

    @field_validator("role_arn")
    @classmethod
    def _role_arn(cls, value: str) -> str:
        if not re.match(r"^arn:aws[a-z-]*:iam::\d{12}:role/.+", value):
            raise ValueError("must be an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
        return value


class RepositorySettings(_Section):
    """A repository and how its key is obtained: a password held in Secrets Manager, a KMS
    key file (the caller's role decrypts it), or neither: `EC2BACKUP_REPO_PASSWORD`."""

    url: str
    password_secret: str | None = Field(
        default=None,
        description="Secrets Manager secret (backup account, home Region) with the password",
    )
    kms: bool = Field(default=False, description="open with the repository's KMS key file")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not (value.startswith("s3://") or value.startswith("/") or value.startswith("file:")):
            raise ValueError("must be s3://BUCKET[/PREFIX] or a local path")
        return value


class WorkerSettings(_Section):
    """How worker instances are launched in a Region (all keys optional: `worker` gives the
    defaults, `workers.<region>` what differs there)."""

    ami: str | None = None
    ami_ssm_parameter: str | None = Field(
        default=None, description="SSM parameter naming the AMI (default: Amazon Linux 2023's)"
    )
    # Subnets workers may run in (the one in the zone of the snapshot's volumes is used); in
    # the backup account, when the policy names none. `subnet_id`: a single one.
    subnet_ids: list[str] | None = None
    subnet_id: str | None = None
    security_group_ids: list[str] | None = None
    instance_profile: str | None = None
    # Instance type by job (`backup`, `restore`, `archive`) or by volume-size class; the plan's
    # own choice otherwise.
    instance_types: dict[str, str] | None = None
    max_lifetime_minutes: int | None = Field(default=None, ge=10, le=7 * 24 * 60)
    # A wheelhouse (`ec2backup worker-image publish`) user-data installs the agent from; none:
    # the image already has `ec2backup` (a pre-built AMI).
    wheelhouse_url: str | None = None


class ResolvedWorker(BaseModel):
    """A Region's worker settings after defaults: what `workers.launch` uses."""

    ami: str | None
    ami_ssm_parameter: str | None
    subnet_ids: list[str]
    security_group_ids: list[str]
    instance_profile: str
    instance_types: dict[str, str]
    max_lifetime_minutes: int
    wheelhouse_url: str | None


class PerformanceSettings(_Section):
    """What the read-strategy choice (ec2backup.readplan) assumes of the account and of EBS."""

    ebs_direct_session_rps: int = Field(
        default=500,
        ge=1,
        le=1000,
        description="GetSnapshotBlock requests per second one session's reads may use (EBS "
        "allows 1,000/s per snapshot and, by default, per account)",
    )
    first_read_mib_s: float = Field(
        default=60.0,
        gt=0,
        description="first-read throughput of a volume created from a snapshot (lazy "
        "loading from S3), per copy",
    )
    volume_setup_seconds: float = Field(
        default=30.0,
        ge=0,
        description="creating and attaching a worker's volume copies",
    )
    ebs_get_block_rps_account: int = Field(
        default=1000,
        ge=1,
        description="the account's GetSnapshotBlock quota per Region (1,000/s unless raised): "
        "every session's EBS direct reads share it (ec2backup.budget)",
    )
    ebs_list_rps_account: int = Field(
        default=50,
        ge=1,
        description="the account's ListChangedBlocks and ListSnapshotBlocks quota per Region, "
        "each (AWS: 50/s, not adjustable): every session's list calls share it "
        "(ec2backup.budget)",
    )
    copy_snapshot_concurrency: int = Field(
        default=20,
        ge=1,
        description="snapshot copies in progress at once per destination Region and account "
        "(AWS: 20): every session's replication shares them (ec2backup.budget)",
    )
    restore_checkpoint_mib: int = Field(
        default=256,
        ge=1,
        description="how much a restore worker writes between durable checkpoints (an fsync "
        "each): what a lost worker's replacement may write again",
    )


class JanitorSettings(_Section):
    enabled: bool = True
    interval_minutes: int = Field(default=15, ge=5)


class InstallationConfig(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="EC2BACKUP_",
        env_nested_delimiter="__",
        extra="forbid",
        case_sensitive=False,
    )

    home_region: str | None = Field(
        default=None, description="Region of the installation key and the catalog (backup account)"
    )
    regions: list[str] = Field(default_factory=list, description="Regions the product works in")
    temporal: TemporalSettings = Field(default_factory=TemporalSettings)
    accounts: list[AccountSettings] = Field(default_factory=list)
    repositories: list[RepositorySettings] = Field(default_factory=list)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    workers: dict[str, WorkerSettings] = Field(default_factory=dict)
    janitor: JanitorSettings = Field(default_factory=JanitorSettings)
    performance: PerformanceSettings = Field(default_factory=PerformanceSettings)
    codec_server: CodecServerSettings = Field(default_factory=CodecServerSettings)

    @field_validator("home_region", "regions", "workers")
    @classmethod
    def _region_names(cls, value: Any) -> Any:
        """Region names (a Region, a list of them, or the keys of `workers`)."""
        names = [] if value is None else [value] if isinstance(value, str) else list(value)
        for region in names:
            if not _REGION.match(region):
                raise ValueError(f"{region!r} is not a Region name")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The environment overrides the file (the file's content arrives as init arguments).
        return env_settings, init_settings

    # ---- lookups ---------------------------------------------------------------------------

    def worker_for(self, region: str) -> ResolvedWorker:
        base = self.worker.model_dump(exclude_none=True)
        here = self.workers.get(region, WorkerSettings()).model_dump(exclude_none=True)
        if "subnet_id" in here or "subnet_ids" in here:  # one setting: the Region's replaces
            base.pop("subnet_id", None)
            base.pop("subnet_ids", None)
        base.update(here)
        return ResolvedWorker(
            ami=base.get("ami"),
            ami_ssm_parameter=base.get("ami_ssm_parameter"),
            subnet_ids=list(
                dict.fromkeys(
                    [*(base.get("subnet_ids") or []), *filter(None, [base.get("subnet_id")])]
                )
            ),
            security_group_ids=list(base.get("security_group_ids") or []),
            instance_profile=base.get("instance_profile") or DEFAULT_WORKER_INSTANCE_PROFILE,
            instance_types=dict(base.get("instance_types") or {}),
            max_lifetime_minutes=int(
                base.get("max_lifetime_minutes") or DEFAULT_WORKER_MAX_LIFETIME_MINUTES
            ),
            wheelhouse_url=base.get("wheelhouse_url"),
        )

    def account_for_role(self, role_arn: str) -> AccountSettings | None:
        for account in self.accounts:
            if account.role_arn == role_arn:
                return account
        account_id = role_arn.split(":")[4] if role_arn.count(":") >= 5 else ""
        for account in self.accounts:
            if account.id == account_id:
                return account
        return None

    def repository(self, url: str) -> RepositorySettings | None:
        wanted = url.rstrip("/")
        for repo in self.repositories:
            if repo.url.rstrip("/") == wanted:
                return repo
        return None


# Variables that configured the product before this file existed; they keep working and, like
# every environment variable, override the file.
LEGACY_ENV: dict[str, tuple[str, ...]] = {
    "EC2BACKUP_WORKER_AMI": ("worker", "ami"),
    "EC2BACKUP_WORKER_INSTANCE_PROFILE": ("worker", "instance_profile"),
    "EC2BACKUP_WORKER_AMI_SSM_PARAMETER": ("worker", "ami_ssm_parameter"),
}

# Environment variables the product reads itself (not configuration keys): pydantic-settings
# must not take them for keys of the file.
_NOT_KEYS = ("EC2BACKUP_CONFIG",)


def config_path() -> Path | None:
    """The configuration file in effect, or None (defaults and environment only)."""
    named = os.environ.get(CONFIG_ENV)
    if named:
        return Path(named).expanduser()
    default = DEFAULT_CONFIG_PATH.expanduser()
    return default if default.exists() else None


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"configuration {path}: cannot read: {exc.strerror}") from None
    try:
        if path.suffix in (".yaml", ".yml"):
            data = yaml.safe_load(text) or {}
        else:
            data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise UserError(f"configuration {path}: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"configuration {path}: the top level must be a table of keys")
    return data


def _apply_legacy(data: dict[str, Any]) -> dict[str, Any]:
    for var, (section, key) in LEGACY_ENV.items():
        value = os.environ.get(var)
        if value:
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][key] = value
    return data


def _key_of(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def parse(data: dict[str, Any], source: str = "configuration") -> InstallationConfig:
    """Validate a configuration (file content + environment); one line per error."""
    saved = {name: os.environ.pop(name) for name in _NOT_KEYS if name in os.environ}
    try:
        return InstallationConfig(**_apply_legacy(data))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            message = str(err["msg"]).removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = "unknown key"
            lines.append(f"{source}: {_key_of(tuple(err['loc']))}: {message}")
        raise UserError("\n".join(lines)) from None
    finally:
        os.environ.update(saved)


@functools.cache
def _load(path: str | None, env_key: str) -> InstallationConfig:
    del env_key  # part of the cache key only
    if path is None:
        return parse({}, "environment")
    return parse(_read_file(Path(path)), f"configuration {path}")


def load() -> InstallationConfig:
    """The configuration in effect (cached per file and environment)."""
    path = config_path()
    env_key = json.dumps(
        sorted((k, v) for k, v in os.environ.items() if k.startswith("EC2BACKUP_")),
    )
    return _load(str(path) if path else None, env_key)


def render_toml(data: dict[str, Any]) -> str:
    """A configuration as TOML (what the lab writes for itself): scalars and lists at the top,
    then one table per section; lists of tables for `accounts` and `repositories`."""
    lines: list[str] = []
    tables: list[tuple[str, Any]] = []
    data = {k: v for k, v in data.items() if v is not None}
    for key, value in data.items():
        if isinstance(value, dict) or (
            isinstance(value, list) and value and isinstance(value[0], dict)
        ):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {json.dumps(value)}")

    def table(name: str, body: dict[str, Any]) -> None:
        nested = {k: v for k, v in body.items() if isinstance(v, dict)}
        lines.append("")
        lines.append(f"[{name}]")
        for k, v in body.items():
            if k not in nested and v is not None:
                lines.append(f"{k} = {json.dumps(v)}")
        for k, v in nested.items():
            table(f'{name}."{k}"' if "-" in k else f"{name}.{k}", v)

    for key, value in tables:
        if isinstance(value, dict):
            table(key, value)
        else:
            for item in value:
                lines.append("")
                lines.append(f"[[{key}]]")
                lines.extend(f"{k} = {json.dumps(v)}" for k, v in item.items() if v is not None)
    return "\n".join(lines) + "\n"


OutputFormat = Literal["table", "json"]

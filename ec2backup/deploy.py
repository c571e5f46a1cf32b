"""`ec2backup setup` and `ec2backup doctor`: make an installation ready, and say what is not.

`setup` is idempotent: each step reports `created`, `updated` or `unchanged`, and a second run
changes nothing. `doctor` changes nothing: it runs every check it can and reports one line per
problem. Both read the installation configuration (ec2backup.config).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from botocore.exceptions import BotoCoreError, ClientError
from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import (
    AddSearchAttributesRequest,
    ListSearchAttributesRequest,
)
from temporalio.client import Client

from ec2backup import authorization, aws, config, iamkit, installation, payloads, workers
from ec2backup.errors import UserError, short_error
from ec2backup.orchestrator import ensure_janitor_schedule, janitor_schedule_state
from ec2backup.temporal import SEARCH_ATTRIBUTES, connect, connect_config

Action = Literal["created", "updated", "unchanged", "skipped", "rotated"]
# How long doctor waits for Temporal before calling it unreachable.
TEMPORAL_CONNECT_TIMEOUT = timedelta(seconds=10)
_INDEXED_TYPES = {
    "Keyword": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD,
    "KeywordList": IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD_LIST,
}


@dataclass
class Step:
    name: str
    action: Action
    detail: str = ""

    def line(self) -> str:
        return f"{self.name}: {self.action}" + (f" ({self.detail})" if self.detail else "")


def regions_of(cfg: config.InstallationConfig) -> list[str]:
    """The Regions the installation works in: the configured ones, always with its home."""
    home = installation.home_region()
    return sorted({home, *cfg.regions})


# ---- setup -------------------------------------------------------------------------------------
async def _missing_search_attributes(client: Client) -> list[str]:
    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    present = set(listed.custom_attributes) | set(listed.system_attributes)
    return [name for name in SEARCH_ATTRIBUTES if name not in present]


async def _setup_search_attributes(client: Client) -> Step:
    missing = await _missing_search_attributes(client)
    if not missing:
        return Step("search attributes", "unchanged", ", ".join(SEARCH_ATTRIBUTES))
    await client.operator_service.add_search_attributes(
        AddSearchAttributesRequest(
            namespace=client.namespace,
            search_attributes={name: _INDEXED_TYPES[SEARCH_ATTRIBUTES[name]] for name in missing},
        )
    )
    return Step("search attributes", "created", f"{', '.join(missing)} in {client.namespace}")


def _setup_installation_key(regions: list[str]) -> list[Step]:
    home = installation.home_region()
    try:
        installation.installation_key()
        steps = [Step("installation key", "unchanged", f"in {home}")]
    except installation.InstallationKeyMissing:
        installation.installation_key(create=True)
        steps = [Step("installation key", "created", f"in {home}")]
    added = installation.replicate_installation_key(regions)
    steps.append(
        Step(
            "installation key replicas",
            "updated" if added else "unchanged",
            ", ".join(added) if added else ", ".join(r for r in regions if r != home) or "none",
        )
    )
    return steps


async def _setup_janitor(client: Client, cfg: config.InstallationConfig) -> Step:
    if not cfg.janitor.enabled:
        return Step("janitor schedule", "skipped", "janitor.enabled = false")
    regions = regions_of(cfg)
    every = timedelta(minutes=cfg.janitor.interval_minutes)
    before = await janitor_schedule_state(client)
    await ensure_janitor_schedule(client, regions, every)
    detail = f"every {cfg.janitor.interval_minutes} min, {', '.join(regions)}"
    if before is None:
        return Step("janitor schedule", "created", detail)
    current, current_every = before
    changed = not set(regions) <= set(current) or current_every != every
    return Step("janitor schedule", "updated" if changed else "unchanged", detail)


def _rotate_payload_key(cfg: config.InstallationConfig) -> Step:
    kid = payloads.rotate(cfg.temporal.payload_kms_key)
    wrapped = f", wrapped by {cfg.temporal.payload_kms_key}" if cfg.temporal.payload_kms_key else ""
    return Step("payload key", "rotated", f"current {kid}{wrapped}; older keys still decode")


async def setup(cfg: config.InstallationConfig, rotate_payload_key: bool = False) -> list[Step]:
    try:
        client = await connect()
    except Exception as exc:
        raise UserError(
            f"temporal: cannot reach {connect_config()['target_host']}: {exc}"
        ) from None
    steps = [await _setup_search_attributes(client)]
    steps += await asyncio.to_thread(_setup_installation_key, regions_of(cfg))
    if rotate_payload_key:
        steps.append(await asyncio.to_thread(_rotate_payload_key, cfg))
    steps.append(await _setup_janitor(client, cfg))
    return steps


# ---- doctor ------------------------------------------------------------------------------------
def _check_payload_keys() -> str:
    ring = payloads.keyring(refresh=True)
    return f"current {ring.current}, {len(ring.keys)} key(s)"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)

    def check(self, name: str, fn: Any, *args: Any) -> Any:
        """Run one check: its failure is one line naming what failed, never a traceback."""
        try:
            result = fn(*args)
        except (UserError, ClientError, BotoCoreError, ValueError, OSError) as exc:
            self.problems.append(f"{name}: {_one_line(exc)}")
            return None
        self.passed.append(f"{name}: ok" + (f" ({result})" if isinstance(result, str) else ""))
        return result


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return f"{aws.error_code(exc)}: {short_error(exc).split(': ', 1)[-1]}"
    return " ".join(str(exc).split()) or type(exc).__name__


async def _doctor_janitor(client: Client, cfg: config.InstallationConfig, report: Report) -> None:
    if not cfg.janitor.enabled:
        return
    try:
        state = await janitor_schedule_state(client)
    except Exception as exc:
        report.problems.append(f"janitor schedule: cannot describe it: {_one_line(exc)}")
        return
    if state is None:
        report.problems.append("janitor schedule: missing (run `ec2backup setup`)")
        return
    missing = sorted(set(regions_of(cfg)) - set(state[0]))
    if missing:
        report.problems.append(
            f"janitor schedule: does not sweep {', '.join(missing)} (run `ec2backup setup`)"
        )
    else:
        report.passed.append(f"janitor schedule: ok ({', '.join(state[0])})")


async def _doctor_temporal(report: Report, cfg: config.InstallationConfig) -> None:
    target = connect_config()["target_host"]
    try:
        client = await asyncio.wait_for(connect(), TEMPORAL_CONNECT_TIMEOUT.total_seconds())
    except Exception as exc:
        report.problems.append(f"temporal: cannot reach {target}: {_one_line(exc)}")
        return
    report.passed.append(f"temporal: ok ({target}, namespace {client.namespace})")
    try:
        missing = await _missing_search_attributes(client)
    except Exception as exc:
        report.problems.append(f"temporal: cannot list search attributes: {_one_line(exc)}")
        return
    for name in missing:
        report.problems.append(
            f"temporal: search attribute {name} is not registered in namespace "
            f"{client.namespace} (run `ec2backup setup`)"
        )
    await _doctor_janitor(client, cfg, report)


def _check_key(region: str) -> str:
    installation.installation_key()
    return f"in {region}"


def _check_replica(region: str) -> str:
    home = installation.home_region()
    sm = aws.client("secretsmanager", home)
    status = sm.describe_secret(SecretId=installation.INSTALLATION_SECRET).get(
        "ReplicationStatus", []
    )
    if region not in {r["Region"] for r in status}:
        raise UserError(f"not replicated to {region} (run `ec2backup setup`)")
    return region


def _check_account(account: config.AccountSettings) -> str:
    identity = aws.client("sts", installation.home_region(), account.role_arn).get_caller_identity()
    if str(identity["Account"]) != account.id:
        raise UserError(f"{account.role_arn} is in account {identity['Account']}, not {account.id}")
    return f"assumed {account.role_arn}"


def _simulate(
    report: Report, name: str, role: iamkit.Role, principal_arn: str, via_role: str | None
) -> None:
    """IAM policy simulation of every action of the kit's `role` policy for the principal
    (a role of the account `via_role` reaches, or of the backup account): one problem line
    per action it may not do. Where simulation itself is refused, the dry runs stand."""
    iam = aws.client("iam", installation.home_region(), via_role)
    try:
        pages = iam.get_paginator("simulate_principal_policy").paginate(
            PolicySourceArn=principal_arn, ActionNames=iamkit.actions(role)
        )
        results = [r for page in pages for r in page["EvaluationResults"]]
    except (ClientError, BotoCoreError) as exc:
        report.passed.append(f"{name}: permissions not simulated ({_one_line(exc)})")
        return
    # A statement whose condition needs request context (a resource's tags) is denied by a
    # simulation without it and says so in MissingContextValues: not a definite denial.
    denied = sorted(
        r["EvalActionName"]
        for r in results
        if r["EvalDecision"] != "allowed" and not r.get("MissingContextValues")
    )
    for action in denied:
        report.problems.append(
            f"{name}: {action} is not allowed to {principal_arn} (IAM policy simulation)"
        )
    if not denied:
        report.passed.append(f"{name}: ok (the {role.value} policy's {len(results)} actions)")


def _role_of(caller_arn: str) -> str | None:
    """The role ARN of an assumed-role session ARN (None: a user or the root)."""
    parts = caller_arn.split(":")
    if len(parts) < 6 or not parts[5].startswith("assumed-role/"):
        return None
    return f"arn:aws:iam::{parts[4]}:role/{parts[5].split('/')[1]}"


def _check_dry_run(region: str, role_arn: str | None) -> str:
    """What the orchestrator does first in a place (describe, snapshot): a dry run tells
    allowed (DryRunOperation) from denied (UnauthorizedOperation) without changing anything."""
    ec2 = aws.client("ec2", region, role_arn)
    try:
        ec2.describe_volumes(DryRun=True, MaxResults=5)
    except ClientError as exc:
        if aws.error_code(exc) != "DryRunOperation":
            raise
    return "ec2:DescribeVolumes allowed"


def _check_worker(region: str, cfg: config.InstallationConfig) -> str:
    settings = cfg.worker_for(region)
    ec2 = aws.client("ec2", region)
    instance_type = settings.instance_types.get("backup") or workers.plan_instance_type(0)
    image = workers.worker_image(ec2, aws.client("ssm", region), settings, instance_type, region)
    found = ec2.describe_images(ImageIds=[image]).get("Images", [])
    if not found:
        raise UserError(f"AMI {image} does not exist in {region}")
    if settings.subnet_ids:
        try:
            ec2.describe_subnets(SubnetIds=settings.subnet_ids)
        except ClientError as exc:
            raise UserError(f"subnet_ids: {_one_line(exc)}") from None
    if settings.security_group_ids:
        try:
            ec2.describe_security_groups(GroupIds=settings.security_group_ids)
        except ClientError as exc:
            raise UserError(f"security_group_ids: {_one_line(exc)}") from None
    try:
        aws.client("iam", region).get_instance_profile(
            InstanceProfileName=settings.instance_profile
        )
    except ClientError as exc:
        if aws.error_code(exc) == "NoSuchEntity":
            raise UserError(
                f"instance_profile: {settings.instance_profile} does not exist in the backup "
                "account (the IAM kit creates it: docs/iam.md)"
            ) from None
        raise
    return f"AMI {image}, instance profile {settings.instance_profile}"


def _check_repository(repo: config.RepositorySettings) -> str:
    from ec2backup.repository.repo import Repository, repository_password

    opened = Repository.open(repo.url, repository_password(repo.url))
    return f"opened, key {opened.key_id[:8]}"


async def doctor(cfg: config.InstallationConfig) -> Report:
    report = Report()
    report.passed.append(f"configuration: ok ({config.config_path() or 'environment only'})")
    await _doctor_temporal(report, cfg)
    home = installation.home_region()
    regions = regions_of(cfg)

    def aws_checks() -> None:
        if report.check("installation key", _check_key, home) is not None:
            report.check("payload keys", _check_payload_keys)
            for region in regions:
                if region != home:
                    report.check(f"installation key replica {region}", _check_replica, region)
        for region in regions:
            report.check(f"backup account {region}", _check_dry_run, region, None)
            report.check(f"workers.{region}", _check_worker, region, cfg)
        for i, account in enumerate(cfg.accounts):
            name = f"accounts.{i} ({account.name or account.id})"
            if report.check(name, _check_account, account) is not None:
                for region in regions:
                    report.check(f"{name} {region}", _check_dry_run, region, account.role_arn)
        for i, repo in enumerate(cfg.repositories):
            if authorization.is_pattern(repo.url):
                continue  # an allow-list prefix (ec2backup.authorization), not a repository
            report.check(f"repositories.{i} ({repo.url})", _check_repository, repo)

    def permission_checks() -> None:
        home_sts = aws.client("sts", home)
        me = _role_of(str(home_sts.get_caller_identity()["Arn"]))
        if me is not None:
            _simulate(report, "orchestrator permissions", iamkit.Role.orchestrator, me, None)
        profile = cfg.worker_for(home).instance_profile
        try:
            roles = aws.client("iam", home).get_instance_profile(InstanceProfileName=profile)[
                "InstanceProfile"
            ]["Roles"]
        except (ClientError, BotoCoreError):
            roles = []  # reported by the workers check
        for role in roles[:1]:
            _simulate(report, "worker permissions", iamkit.Role.worker, role["Arn"], None)
        for i, account in enumerate(cfg.accounts):
            name = f"accounts.{i} ({account.name or account.id}) permissions"
            # a role that cannot be assumed is reported by the account check (aws_checks)
            _simulate(report, name, iamkit.Role.production, account.role_arn, account.role_arn)

    await asyncio.to_thread(aws_checks)
    await asyncio.to_thread(permission_checks)
    return report

"""The IAM kit: policy documents for the three identities ec2backup runs as, and a
CloudFormation template that creates them (docs/iam.md; `ec2backup iam print ROLE`).

- **orchestrator** (backup account): every control-plane call: snapshot sets, copies, workers,
  restores, retention, the Janitor, in its own account; Secrets Manager (installation key,
  known places and repositories, session secrets); the repositories in S3; and
  `sts:AssumeRole` on the production role of every other account.
- **worker** (instance profile of worker instances, backup or production account): the
  repository in S3, its session secret and the agents' Temporal credentials, the EBS direct
  *list* calls (which blocks changed; the data itself is read from the attached volume), and
  `sts:AssumeRole` on the production role (the snapshots' owner must make those list calls).
- **production** (each production account, assumed by the orchestrator with an ExternalId and
  by the workers): the orchestrator's EC2, KMS, SSM and session-secret statements for that
  account, plus the EBS direct list calls for the workers. No S3, no installation secrets.

The files beside this module are the documents (`<role>.json`, `<role>-trust.json`) and the
template (`cloudformation.yaml`, StackSet-ready: no account-specific literal). Placeholders are
CloudFormation's `${Name}` with the template's parameter names, so the JSON and the template say
the same thing (a test evaluates the template and compares): `BackupAccountId`, `ExternalId`,
`RepositoryBucket`, `ArchiveBucket`, `InstallationId`, `AgentCredentialsSecret`,
`RepositoryPasswordSecret`, the three role names, and the pseudo parameters `AWS::Partition`
and `AWS::AccountId` (the account the document is deployed in). `substitute` fills them in;
list entries naming `${ArchiveBucket}` are dropped when it is empty (its default), as the
template's `!If` does.

What is conditioned, and why (least privilege within what the code does):
- Destructive EC2 calls (TerminateInstances, DeleteVolume, DetachVolume, AttachVolume,
  DeregisterImage, DeleteSnapshot of temporary snapshots, CreateSnapshot of a restore worker's
  volume) require `aws:ResourceTag/ec2backup:installation`: every temporary resource the
  product makes carries that tag from creation (`ec2backup.installation.INSTALLATION_TAG`) and
  a restore's delivered instance and volumes lose it when handed over, so the roles cannot
  terminate, detach or delete what does not carry it (the operator's instances and volumes,
  a restore's result). With `InstallationId` given, only that installation's (two
  installations sharing an account).
- Their creation (RunInstances' instance, CreateVolume, CreateSnapshot, RegisterImage's
  image, session secrets) requires `aws:RequestTag/ec2backup:installation`: the code always
  tags at creation (TagSpecifications, CreateSecret Tags), so an untagged, unsweepable resource
  cannot be made. The sources these calls read (any snapshot, image, subnet, security group)
  are not conditioned: the product reads the operator's.
- Snapshot sets and replicas carry `ec2backup:managed=true` (`ec2backup.tagcodec`), not the
  installation tag: retention's DeleteSnapshot, the sharing ModifySnapshotAttribute, the
  metadata CreateTags/DeleteTags (keys `ec2backup:m*` only) and the EBS direct list calls
  require it. CreateSnapshots must tag the new snapshots `ec2backup:managed=true`.
- CreateTags is otherwise allowed only as part of a creating call (`ec2:CreateAction`), and
  DeleteTags on instances and volumes only for the two keys a restore's hand-over removes.
- Not conditioned: CreateSnapshots on the instance and its volumes (any instance a policy
  selects), CopySnapshot (additive; one call authorizes the source and the new snapshot, and
  the copies are tagged at creation anyway), Describe* (no resource-level permissions).
- KMS for EBS only through EC2 (`kms:ViaService`), grants only for AWS resources; repository
  key files only with their encryption context (`ec2backup-repository`); iam:PassRole only of
  the worker role, only to EC2.
"""

from __future__ import annotations

import copy
import enum
import json
import re
from collections.abc import Mapping
from functools import cache
from importlib import resources
from typing import Any


class Role(enum.StrEnum):
    """What `ec2backup iam print` prints: a role's documents, or the template."""

    orchestrator = "orchestrator"
    worker = "worker"
    production = "production"
    cloudformation = "cloudformation"


POLICY_ROLES = (Role.orchestrator, Role.worker, Role.production)
TEMPLATE_FILE = "cloudformation.yaml"

# The template's parameter defaults (the pseudo parameter AWS::Partition: the commercial
# partition). Placeholders without a default stay as they are until given.
DEFAULTS: dict[str, str] = {
    "AWS::Partition": "aws",
    "ArchiveBucket": "",
    "InstallationId": "*",
    "AgentCredentialsSecret": "ec2backup/agent-credentials",
    "RepositoryPasswordSecret": "ec2backup/repository-password",
    "OrchestratorRoleName": "ec2backup-orchestrator",
    "WorkerRoleName": "ec2backup-worker",
    "ProductionRoleName": "ec2backup-production",
}
# Each placeholder's form, as the template's AllowedPattern (a test compares them), so a value
# printed here is one the stack would accept.
PATTERNS: dict[str, str] = {
    "BackupAccountId": r"^[0-9]{12}$",
    "AWS::AccountId": r"^[0-9]{12}$",
    # The template also takes "" (a backup-account stack has no production trust; its Rules
    # refuse that for production), a document never: an empty ExternalId matches nobody.
    "ExternalId": r"^[A-Za-z0-9+=,.@:/_-]{2,}$",
    "RepositoryBucket": r"^[a-z0-9*?][a-z0-9.*?-]{0,62}$",
    "ArchiveBucket": r"^([a-z0-9*?][a-z0-9.*?-]{0,62})?$",
    "InstallationId": r"^(\*|[0-9a-f]{16})$",
    "AgentCredentialsSecret": r"^[A-Za-z0-9/_+=.@-]+$",
    "RepositoryPasswordSecret": r"^[A-Za-z0-9/_+=.@*?-]+$",
    "OrchestratorRoleName": r"^[A-Za-z0-9+=,.@_-]{1,64}$",
    "WorkerRoleName": r"^[A-Za-z0-9+=,.@_-]{1,64}$",
    "ProductionRoleName": r"^[A-Za-z0-9+=,.@_-]{1,64}$",
    "AWS::Partition": r"^aws(-[a-z]+)*$",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z0-9:]+)\}")
_ARCHIVE = "${ArchiveBucket}"


def _read(name: str) -> str:
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8")


@cache
def _documents() -> dict[str, dict[str, Any]]:
    names = [f"{role.value}{suffix}" for role in POLICY_ROLES for suffix in ("", "-trust")]
    return {name: json.loads(_read(f"{name}.json")) for name in names}


def documents() -> dict[str, dict[str, Any]]:
    """Every document as stored, placeholders and all: `orchestrator`, `orchestrator-trust`,
    `worker`, `worker-trust`, `production`, `production-trust`."""
    return copy.deepcopy(_documents())


def template() -> str:
    """The CloudFormation template (YAML, with CloudFormation's short tags)."""
    return _read(TEMPLATE_FILE)


def _policy_role(role: Role | str) -> Role:
    role = Role(role)
    if role not in POLICY_ROLES:
        raise ValueError(f"{role.value} is the template, not a role with policy documents")
    return role


def policy(role: Role | str, values: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The role's permissions policy, with `values` (and the defaults) filled in."""
    return substitute(_documents()[_policy_role(role).value], values)


def trust(role: Role | str, values: Mapping[str, str | None] | None = None) -> dict[str, Any]:
    """The role's trust policy, with `values` (and the defaults) filled in."""
    return substitute(_documents()[f"{_policy_role(role).value}-trust"], values)


def placeholders(doc: Any) -> set[str]:
    """The names of the `${...}` placeholders left in a document."""
    if isinstance(doc, str):
        return set(_PLACEHOLDER.findall(doc))
    if isinstance(doc, dict):
        return set().union(*(placeholders(v) for v in doc.values()))
    if isinstance(doc, list):
        return set().union(*(placeholders(v) for v in doc))
    return set()


class InvalidValue(ValueError):
    """A placeholder's value the template would refuse (or an unknown placeholder)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name = name
        self.problem = problem


def validate(values: Mapping[str, str | None]) -> None:
    """InvalidValue for a value the template would refuse, or an unknown placeholder."""
    for name, value in values.items():
        if name not in PATTERNS:
            raise InvalidValue(name, f"unknown placeholder (known: {', '.join(sorted(PATTERNS))})")
        if value is not None and not re.fullmatch(PATTERNS[name], value):
            raise InvalidValue(name, f"{value!r} does not match {PATTERNS[name]}")


def substitute(doc: Any, values: Mapping[str, str | None] | None = None) -> Any:
    """A copy of `doc` with the placeholders that have a value (given, else default) filled in;
    None leaves one as it is. List entries naming `${ArchiveBucket}` go when it is empty."""
    merged = {**DEFAULTS, **{k: v for k, v in (values or {}).items() if v is not None}}
    validate(merged)
    return _fill(doc, merged)


def _fill(node: Any, values: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return _PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), node)
    if isinstance(node, dict):
        return {k: _fill(v, values) for k, v in node.items()}
    if isinstance(node, list):
        drop = values.get("ArchiveBucket") == ""
        # Only a string entry goes (a Resource ARN), never a statement that holds one.
        return [
            _fill(v, values) for v in node if not (drop and isinstance(v, str) and _ARCHIVE in v)
        ]
    return node


def actions(role: Role | str) -> list[str]:
    """Every action the role's policy allows (what `doctor` asks IAM to simulate)."""
    found: set[str] = set()
    for st in policy(role)["Statement"]:
        if st.get("Effect") != "Allow":
            continue
        value = st.get("Action", [])
        found.update([value] if isinstance(value, str) else value)
    return sorted(found)

"""The IAM kit (ec2backup.iamkit): the documents are well-formed, the template says what the
JSON says, the CLI prints each, and, above all, every AWS call the product's code makes is
allowed by the role that makes it (and nothing more is granted).

The coverage check reads the product's sources (not the lab's) with `ast`: boto3 clients are
recognised where they are made (`aws.client("ec2", ...)`, `boto3.client("s3")`, factories that
return one) or passed in under the names the code uses for them (`ec2`, `sm`, `ebs`, ...), and
each operation used on one (`ec2.describe_volumes`, `get_paginator("list_objects_v2")`) is
mapped to its IAM action through botocore's own service models. Who makes a call follows from
where it is: see `roles_of`. Pure: no lab, no network.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import json
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import botocore.session
import pytest
import yaml
from botocore import xform_name

from ec2backup import iamkit
from ec2backup.iamkit import Role

ROOT = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ["ec2backup", "activities", "worker_agent", "workflows"]
EXCLUDED = {"ec2backup/cli/lab.py"}  # the lab's CLI (the lab itself, ec2backup_lab/, is apart)
ORCH, WORKER, PROD = Role.orchestrator, Role.worker, Role.production
VALUES = {
    "BackupAccountId": "111111111111",
    "AWS::AccountId": "222222222222",
    "ExternalId": "ec2backup-test-external-id",
    "RepositoryBucket": "acme-ec2backup-*",
    "ArchiveBucket": "acme-archive",
    "InstallationId": "0123456789abcdef",
}


# ---- reading the template: a YAML loader for CloudFormation's short tags ----------------------
class CfnLoader(yaml.SafeLoader):
    """SafeLoader that turns `!Sub x` into `{"Fn::Sub": x}`, `!Ref x` into `{"Ref": x}`,
    `!GetAtt a.b` into `{"Fn::GetAtt": ["a", "b"]}` (the long forms CloudFormation uses)."""


def _cfn_tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> Any:
    value: Any
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    if suffix in ("Ref", "Condition"):
        return {suffix: value}
    if suffix == "GetAtt" and isinstance(value, str):
        value = value.split(".", 1)
    return {f"Fn::{suffix}": value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_template() -> dict[str, Any]:
    return dict(yaml.load(iamkit.template(), Loader=CfnLoader))  # a SafeLoader subclass


_NO_VALUE = object()


class Evaluator:
    """The intrinsic functions the template uses, evaluated for given parameters."""

    def __init__(self, tpl: dict[str, Any], params: dict[str, str]) -> None:
        self.params = {
            name: params.get(name, spec.get("Default")) for name, spec in tpl["Parameters"].items()
        }
        self.params["AWS::Partition"] = params.get("AWS::Partition", "aws")
        self.params["AWS::AccountId"] = params["AWS::AccountId"]
        self.tpl = tpl
        self.conditions: dict[str, bool] = {}
        for name in tpl["Conditions"]:
            self.condition(name)

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.eval(self.tpl["Conditions"][name]))
        return self.conditions[name]

    def eval(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.eval(x) for x in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((fn, arg),) = node.items()
            if fn == "Ref":
                if arg == "AWS::NoValue":
                    return _NO_VALUE
                return self.params.get(arg, {"Ref": arg})  # not a parameter: a resource
            if fn == "Condition":
                return self.condition(arg)
            if fn == "Fn::Sub":
                text, extra = (arg, {}) if isinstance(arg, str) else arg
                scope = {**self.params, **{k: self.eval(v) for k, v in extra.items()}}
                return re.sub(r"\$\{([A-Za-z0-9:]+)\}", lambda m: scope[m.group(1)], text)
            if fn == "Fn::If":
                cond, yes, no = arg
                return self.eval(yes if self.condition(cond) else no)
            if fn == "Fn::Equals":
                a, b = (self.eval(x) for x in arg)
                return a == b
            if fn == "Fn::Not":
                return not self.eval(arg[0])
            if fn == "Fn::Or":
                return any(self.eval(x) for x in arg)
            if fn == "Fn::And":
                return all(self.eval(x) for x in arg)
            assert not fn.startswith("Fn::"), f"evaluator lacks {fn}"
        return {k: v for k, v in ((k, self.eval(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def resources(self) -> dict[str, dict[str, Any]]:
        return {
            name: self.eval(res["Properties"])
            for name, res in self.tpl["Resources"].items()
            if "Condition" not in res or self.condition(res["Condition"])
        }


# ---- the documents ------------------------------------------------------------------------------
def statements(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["Statement"])


def as_list(value: str | list[str]) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def test_documents_are_iam_policies() -> None:
    docs = iamkit.documents()
    assert sorted(docs) == sorted(
        [r.value for r in iamkit.POLICY_ROLES] + [f"{r.value}-trust" for r in iamkit.POLICY_ROLES]
    )
    for name, doc in docs.items():
        assert doc["Version"] == "2012-10-17", name
        sids = [s.get("Sid") for s in statements(doc)]
        assert len(sids) == len(set(sids)) and all(sids), f"{name}: Sids must be unique"
        for s in statements(doc):
            assert s["Effect"] == "Allow", f"{name} {s['Sid']}: the kit only allows"
            assert not {"NotAction", "NotResource", "NotPrincipal"} & set(s)
            for action in as_list(s["Action"]):
                # explicit actions only: a wildcard would grant what a future AWS API adds
                assert re.fullmatch(r"[a-z0-9-]+:[A-Za-z0-9]+", action), f"{name}: {action}"
            assert ("Principal" in s) == name.endswith("-trust"), name
            assert ("Resource" in s) != name.endswith("-trust"), name
        assert iamkit.placeholders(doc) <= set(iamkit.PATTERNS), name


def test_documents_fit_iam_limits() -> None:
    # Inline policies of one role: 10,240 characters together; a trust policy: 2,048 (default
    # quota); IAM counts without whitespace.
    for role in iamkit.POLICY_ROLES:
        doc = iamkit.policy(role, VALUES)
        assert len(json.dumps(doc, separators=(",", ":"))) < 10_240, role
        assert len(json.dumps(iamkit.trust(role, VALUES), separators=(",", ":"))) < 2_048, role


def test_orchestrator_and_production_share_the_ec2_statements() -> None:
    """The orchestrator does in the backup account what the production role does elsewhere
    (same-account instances, backup-placement workers, restores there): the same statements,
    except what only one of them calls (worker: change lists; doctor: security groups, and
    each simulates its own role)."""
    orch = {s["Sid"]: s for s in statements(iamkit.documents()["orchestrator"])}
    for s in statements(iamkit.documents()["production"]):
        if s["Sid"] in ("Describe", "ChangedBlocks", "DoctorSimulation"):
            continue
        assert orch.get(s["Sid"]) == s, s["Sid"]


def test_substitution_fills_in_and_drops_the_absent_archive_bucket() -> None:
    doc = iamkit.policy(ORCH, VALUES)
    assert iamkit.placeholders(doc) == set()
    text = json.dumps(doc)
    assert "arn:aws:s3:::acme-archive/*" in text and "0123456789abcdef" in text
    without = iamkit.policy(ORCH, {**VALUES, "ArchiveBucket": None})
    assert "acme-archive" not in json.dumps(without)
    assert len(statements(without)) == len(statements(doc))
    assert iamkit.placeholders(iamkit.policy(WORKER)) == {"RepositoryBucket", "BackupAccountId"}
    with pytest.raises(iamkit.InvalidValue, match="BackupAccountId"):
        iamkit.policy(WORKER, {"BackupAccountId": "12345"})
    with pytest.raises(ValueError, match="template"):
        iamkit.policy(Role.cloudformation)


def test_production_trust_requires_the_external_id_of_the_orchestrator() -> None:
    doc = iamkit.trust(PROD, VALUES)
    by_sid = {s["Sid"]: s for s in statements(doc)}
    orch = by_sid["Orchestrator"]
    assert orch["Condition"]["StringEquals"] == {"sts:ExternalId": VALUES["ExternalId"]}
    assert orch["Condition"]["ArnEquals"] == {
        "aws:PrincipalArn": "arn:aws:iam::111111111111:role/ec2backup-orchestrator"
    }
    # The workers assume it too (EBS direct lists must come from the snapshots' owner), from
    # the backup account or this one; the agent has no ExternalId to give (see docs/iam.md).
    assert by_sid["Workers"]["Condition"]["ArnEquals"]["aws:PrincipalArn"] == [
        "arn:aws:iam::111111111111:role/ec2backup-worker",
        "arn:aws:iam::222222222222:role/ec2backup-worker",
    ]
    assert set(by_sid) == {"Orchestrator", "Workers"}


# ---- the template -------------------------------------------------------------------------------
def test_template_parses_and_has_no_account_literals() -> None:
    tpl = load_template()
    assert tpl["AWSTemplateFormatVersion"] == "2010-09-09"
    assert not re.search(r"\b\d{12}\b", iamkit.template()), "StackSet: no account ids"
    assert "arn:aws:" not in iamkit.template(), "partition from AWS::Partition"
    # `--template-body` takes at most 51,200 bytes (larger needs an S3 URL)
    assert len(iamkit.template().encode()) < 51_200


def test_template_parameters_match_the_kit() -> None:
    params = load_template()["Parameters"]
    for name, pattern in iamkit.PATTERNS.items():
        if name.startswith("AWS::"):
            continue
        if name == "ExternalId":  # optional in the template (backup account), see PATTERNS
            assert params[name]["AllowedPattern"] == f"^({pattern[1:-1]})?$"
            assert params[name]["Default"] == ""
            continue
        assert params[name]["AllowedPattern"] == pattern, name
        assert params[name].get("Default") == iamkit.DEFAULTS.get(name), name
    for name, default in iamkit.DEFAULTS.items():
        assert name.startswith("AWS::") or name in params, name
        if not name.startswith("AWS::"):
            assert re.fullmatch(iamkit.PATTERNS[name], default), name


@pytest.mark.parametrize("archive", ["acme-archive", ""])
def test_template_says_what_the_documents_say(archive: str) -> None:
    tpl = load_template()
    values = {**VALUES, "ArchiveBucket": archive}
    backup = Evaluator(tpl, {**values, "Deployment": "backup"}).resources()
    prod = Evaluator(tpl, {**values, "Deployment": "production"}).resources()
    no_worker = Evaluator(
        tpl, {**values, "Deployment": "production", "CreateWorkerRole": "false"}
    ).resources()
    assert set(backup) == {
        "OrchestratorRole",
        "OrchestratorInstanceProfile",
        "WorkerRole",
        "WorkerInstanceProfile",
    }
    assert set(prod) == {"ProductionRole", "WorkerRole", "WorkerInstanceProfile"}
    assert set(no_worker) == {"ProductionRole"}
    kit = {k: v for k, v in values.items() if v} | {"ArchiveBucket": archive or None}
    for logical, role, resources in [
        ("OrchestratorRole", ORCH, backup),
        ("WorkerRole", WORKER, backup),
        ("WorkerRole", WORKER, prod),
        ("ProductionRole", PROD, prod),
    ]:
        props = resources[logical]
        assert props["AssumeRolePolicyDocument"] == iamkit.trust(role, kit), logical
        (inline,) = props["Policies"]
        assert inline["PolicyDocument"] == iamkit.policy(role, kit), logical
        assert props["RoleName"] == iamkit.DEFAULTS[f"{role.value.capitalize()}RoleName"]
    # The instance profile carries the worker role's name: what the orchestrator launches with.
    assert backup["WorkerInstanceProfile"]["InstanceProfileName"] == "ec2backup-worker"


def test_template_insists_on_an_external_id_in_production_accounts() -> None:
    rule = load_template()["Rules"]["ExternalIdForProduction"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "Deployment"}, "production"]}
    assert rule["Assertions"][0]["Assert"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ExternalId"}, ""]}]
    }


# ---- the CLI ------------------------------------------------------------------------------------
def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", "iam", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )


@pytest.mark.parametrize("role", [r.value for r in iamkit.POLICY_ROLES])
def test_cli_prints_each_document(role: str) -> None:
    done = run_cli("print", role)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == iamkit.policy(role)
    trust = run_cli(
        "print", role, "--trust", "--backup-account-id", "111111111111", "--account-id",
        "222222222222", "--external-id", "xid-123", "--bucket", "b",
    )  # fmt: skip
    assert trust.returncode == 0, trust.stderr
    assert json.loads(trust.stdout) == iamkit.trust(
        role,
        {
            "BackupAccountId": "111111111111",
            "AWS::AccountId": "222222222222",
            "ExternalId": "xid-123",
            "RepositoryBucket": "b",
        },
    )
    assert iamkit.placeholders(json.loads(trust.stdout)) == set()
    assert trust.stderr == ""


def test_cli_names_what_is_left_to_fill_in() -> None:
    done = run_cli("print", "worker", "--bucket", "acme-*", "--archive-bucket", "acme-cold")
    assert done.returncode == 0, done.stderr
    assert "arn:aws:s3:::acme-cold/*" in done.stdout
    assert done.stderr.strip() == (
        "note: placeholders left: ${BackupAccountId} (--backup-account-id)"
    )


def test_cli_prints_the_template() -> None:
    done = run_cli("print", "cloudformation")
    assert done.returncode == 0, done.stderr
    assert done.stdout == iamkit.template()
    assert "Resources" in yaml.load(done.stdout, Loader=CfnLoader)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["print", "worker", "--backup-account-id", "123"], "error: --backup-account-id: '123'"),
        (["print", "cloudformation", "--bucket", "b"], "error: --bucket: the template takes"),
        (["print", "nobody"], "error: Invalid value for 'role'"),
    ],
)
def test_cli_errors_are_one_line(args: list[str], message: str) -> None:
    done = run_cli(*args)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.startswith(message) and done.stderr.count("\n") == 1, done.stderr


# ---- least privilege: what is conditioned -------------------------------------------------------
def grants(doc: dict[str, Any], action: str) -> Iterator[dict[str, Any]]:
    for s in statements(doc):
        if any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in as_list(s["Action"])):
            yield s


def resource_kinds(s: dict[str, Any]) -> set[str]:
    """`instance`, `volume`, `snapshot`, ... of a statement's EC2 resources (`*`: any)."""
    return {
        "*" if r == "*" else r.rsplit(":", 1)[-1].split("/", 1)[0] for r in as_list(s["Resource"])
    }


def condition_keys(s: dict[str, Any]) -> set[str]:
    return {key for op in s.get("Condition", {}).values() for key in op}


OURS = "aws:ResourceTag/ec2backup:installation"
MANAGED = "aws:ResourceTag/ec2backup:managed"
TAGGED = "aws:RequestTag/ec2backup:installation"


@pytest.mark.parametrize("role", [ORCH, PROD])
def test_destructive_calls_only_on_what_the_product_made(role: Role) -> None:
    doc = iamkit.documents()[role.value]
    destructive = [
        "ec2:AttachVolume",
        "ec2:DeleteSnapshot",
        "ec2:DeleteVolume",
        "ec2:DeregisterImage",
        "ec2:DetachVolume",
        "ec2:ModifySnapshotAttribute",
        "ec2:TerminateInstances",
        "ec2:DeleteTags",
    ]
    if role == ORCH:  # session secrets live in the backup account only
        destructive += ["secretsmanager:DeleteSecret", "secretsmanager:PutSecretValue"]
    else:
        assert not list(grants(doc, "secretsmanager:DeleteSecret"))
    for action in destructive:
        found = list(grants(doc, action))
        assert found, action
        for s in found:
            assert condition_keys(s) & {OURS, MANAGED}, f"{action} in {s['Sid']}"


@pytest.mark.parametrize("role", [ORCH, PROD])
def test_creations_must_tag(role: Role) -> None:
    """What the product creates and later deletes is tagged at creation, or not made."""
    doc = iamkit.documents()[role.value]
    made = {
        "ec2:RunInstances": "instance",
        "ec2:CreateVolume": "volume",
        "ec2:CreateSnapshot": "snapshot",
        "ec2:RegisterImage": "image",
        "ec2:CreateSnapshots": "snapshot",
    }
    for action, kind in made.items():
        for s in grants(doc, action):
            if kind in resource_kinds(s) or "*" in resource_kinds(s):
                # (a ResourceTag condition cannot hold for a resource being created: as strict)
                keys = condition_keys(s)
                tags = {TAGGED, "aws:RequestTag/ec2backup:managed", OURS}
                assert keys & tags, f"{action} {s['Sid']}"
    for s in grants(doc, "ec2:CreateTags"):
        assert condition_keys(s) & {"ec2:CreateAction", MANAGED}, s["Sid"]
    for s in grants(doc, "secretsmanager:CreateSecret"):
        assert s["Sid"] == "InstallationSecrets" or TAGGED in condition_keys(s), s["Sid"]


# The resource types each EC2/EBS action is authorized on in the product's calls (IAM Service
# Authorization Reference): a grant missing one fails that call whatever the actions say.
RESOURCE_TYPES = {
    "ec2:CreateSnapshots": {"instance", "volume", "snapshot"},
    "ec2:CreateSnapshot": {"volume", "snapshot"},
    "ec2:CopySnapshot": {"snapshot"},
    "ec2:CreateVolume": {"volume", "snapshot"},
    "ec2:RunInstances": {
        "instance", "volume", "image", "snapshot", "subnet", "security-group", "network-interface",
    },
    "ec2:RegisterImage": {"image", "snapshot"},
    "ec2:AttachVolume": {"instance", "volume"},
    "ec2:DetachVolume": {"instance", "volume"},
    "ec2:TerminateInstances": {"instance"},
    "ec2:DeleteVolume": {"volume"},
    "ec2:DeleteSnapshot": {"snapshot"},
    "ec2:LockSnapshot": {"snapshot"},
    "ec2:DeregisterImage": {"image"},
    "ec2:ModifySnapshotAttribute": {"snapshot"},
    "ec2:CreateTags": {"instance", "volume", "snapshot", "image"},
    "ec2:DeleteTags": {"instance", "volume", "snapshot"},
    "ebs:ListChangedBlocks": {"snapshot"},
    "ebs:ListSnapshotBlocks": {"snapshot"},
    "ebs:GetSnapshotBlock": {"snapshot"},
}  # fmt: skip


@pytest.mark.parametrize("role", list(iamkit.POLICY_ROLES))
def test_grants_cover_each_resource_type(
    role: Role, required: dict[Role, dict[str, list[str]]]
) -> None:
    doc = iamkit.policy(role, VALUES)
    for action in sorted(required[role]):
        kinds = RESOURCE_TYPES.get(action)
        if action.startswith(("ec2:", "ebs:")) and not action.startswith("ec2:Describe"):
            assert kinds, f"add {action}'s resource types to RESOURCE_TYPES"
        if kinds:
            granted = set().union(*(resource_kinds(s) for s in grants(doc, action)))
            assert kinds <= granted, (role.value, action, sorted(kinds - granted))


def test_tag_keys_and_names_are_the_codes() -> None:
    """The conditions name the tags and secrets the code uses (a renamed tag must fail here,
    not in production)."""
    from ec2backup import installation, tagcodec
    from ec2backup.restore import plan as restore_plan

    text = json.dumps(iamkit.documents())
    assert installation.INSTALLATION_TAG == "ec2backup:installation"
    assert tagcodec.MANAGED_KEY == "ec2backup:managed" and tagcodec.PAYLOAD_PREFIX == "ec2backup:m"
    assert restore_plan.PENDING_KEY == "ec2backup:restore-pending"
    for key in ["ec2backup:installation", "ec2backup:managed", "ec2backup:restore-pending"]:
        assert key in text
    assert f"secret:{installation.INSTALLATION_SECRET}-??????" in text
    assert f"secret:{installation.KNOWN_PREFIX}/*" in text
    session_prefix = "ec2backup/session/"  # ec2backup.workers.SESSION_SECRET_PREFIX
    assert f"secret:{session_prefix}*" in text
    src = (ROOT / "ec2backup/workers.py").read_text()
    assert f'SESSION_SECRET_PREFIX = "{session_prefix}"' in src
    config_src = (ROOT / "ec2backup/config.py").read_text()
    assert 'DEFAULT_WORKER_INSTANCE_PROFILE = "ec2backup-worker"' in config_src
    assert iamkit.DEFAULTS["WorkerRoleName"] == "ec2backup-worker"


# ---- coverage: every call the code makes is allowed to the role that makes it ------------------
# boto3's names for the clients the code passes around (a parameter `ec2: Any` is an EC2 client).
CLIENT_NAMES = {
    "ec2": "ec2",
    "src_ec2": "ec2",
    "dst_ec2": "ec2",
    "ebs": "ebs",
    "sm": "secretsmanager",
    "s3": "s3",
    "kms": "kms",
    "sts": "sts",
    "ssm": "ssm",
    "iam": "iam",
}
SERVICES = set(botocore.session.get_session().get_available_services())
# Attributes of a client that are not AWS operations.
NOT_OPERATIONS = {"exceptions", "meta", "can_paginate", "get_waiter", "close", "waiter_names"}
# S3's IAM actions differ from its operations (the rest map one to one).
S3_ACTIONS = {
    "ListObjectsV2": ["s3:ListBucket"],
    "ListObjects": ["s3:ListBucket"],
    "HeadBucket": ["s3:ListBucket"],
    "HeadObject": ["s3:GetObject"],
    "GetObject": ["s3:GetObject"],
    "PutObject": ["s3:PutObject"],
    "CreateMultipartUpload": ["s3:PutObject"],
    "UploadPart": ["s3:PutObject"],
    "CompleteMultipartUpload": ["s3:PutObject"],
    "AbortMultipartUpload": ["s3:AbortMultipartUpload"],
    "DeleteObject": ["s3:DeleteObject"],
    "DeleteObjects": ["s3:DeleteObject"],
    "CopyObject": ["s3:GetObject", "s3:PutObject"],
    "RestoreObject": ["s3:RestoreObject"],
    "GetBucketLocation": ["s3:GetBucketLocation"],
    "GetBucketLifecycleConfiguration": ["s3:GetLifecycleConfiguration"],
    "PutBucketLifecycleConfiguration": ["s3:PutLifecycleConfiguration"],
    "GetObjectLockConfiguration": ["s3:GetBucketObjectLockConfiguration"],
    "PutObjectRetention": ["s3:PutObjectRetention"],
}
# Calls no IAM policy can deny.
NEEDS_NO_PERMISSION = {"sts:GetCallerIdentity"}
# What a call needs besides its own action: tags at creation are authorized as ec2:CreateTags
# (ec2:CreateAction) and secretsmanager:TagResource; a worker's instance profile is passed
# (iam:PassRole); EBS volumes under a customer managed key need KMS through EC2.
EBS_KMS = {
    "kms:CreateGrant",
    "kms:Decrypt",
    "kms:DescribeKey",
    "kms:GenerateDataKeyWithoutPlaintext",
    "kms:ReEncryptFrom",
    "kms:ReEncryptTo",
}
IMPLIED = {
    "ec2:RunInstances": {"ec2:CreateTags", "iam:PassRole", *EBS_KMS},
    "ec2:CreateVolume": {"ec2:CreateTags", *EBS_KMS},
    "ec2:CopySnapshot": {"ec2:CreateTags", *EBS_KMS},
    "ec2:CreateSnapshots": {"ec2:CreateTags"},
    "ec2:CreateSnapshot": {"ec2:CreateTags"},
    "ec2:RegisterImage": {"ec2:CreateTags"},
    "secretsmanager:CreateSecret": {"secretsmanager:TagResource"},
    # CreateKey with Tags needs kms:TagResource as well
    "kms:CreateKey": {"kms:TagResource"},
}

# Who makes a call, by where it is (path, or path::function), most specific first:
# - worker_agent/ is the worker; the core functions it calls that make AWS calls of their own
#   are named here (its session secret, its Temporal credentials);
# - the repository and its key files are opened by both (the orchestrator commits, prunes,
#   checks; the worker writes packs), except what only `repo init` and archive retrieval do;
# - aws.py's AssumeRole is made with the caller's own credentials, orchestrator or worker;
# - the rest of ec2backup/ and activities/ is the orchestrator (and the operator's CLI).
# A client made with a role ARN (or passed in, so possibly one) acts as the production role
# too: the orchestrator's work in a production account, or the worker's change lists.
ROLE_TABLE: list[tuple[str, set[Role] | None]] = [
    # EBS direct: the worker reads blocks of its own account's snapshots only (readplan: never
    # through the production role, which the orchestrator holds too); the orchestrator counts
    # the blocks a session will read (list calls), for the read-strategy choice.
    ("ec2backup/ebs.py::get_block", {WORKER}),
    ("ec2backup/ebs.py", {ORCH}),
    ("ec2backup/workers.py::read_session_secret", {WORKER}),
    ("ec2backup/temporal.py::agent_credentials", {WORKER}),
    ("ec2backup/repository/backend.py::S3Backend.ensure_abort_multipart_rule", {ORCH}),
    ("ec2backup/repository/backend.py::S3Backend.request_retrieval", {ORCH}),
    ("ec2backup/keys.py::wrap_with_kms", {ORCH}),
    ("ec2backup/repository/repo.py::repository_password", {ORCH}),  # doctor (configured repos)
    ("ec2backup/aws.py", {ORCH, WORKER}),
    ("ec2backup/repository/", {ORCH, WORKER}),
    ("ec2backup/keys.py", {ORCH, WORKER}),
    ("worker_agent/", {WORKER}),
    ("", {ORCH}),
]
NO_ROLE_CHAIN = ("ec2backup/aws.py",)  # its clients are the chain's start, never a role
# Calls made with a passed-in client that is never a production role's (see ROLE_TABLE).
OWN_ACCOUNT_ONLY = ("ec2backup/ebs.py::get_block",)


@dataclass(frozen=True)
class Call:
    path: str
    function: str
    line: int
    service: str
    operation: str  # boto3's method name
    with_role: bool | None  # client made with a role ARN; None: passed in, unknown

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line} ({self.function})"


@dataclass(frozen=True)
class Binding:
    service: str
    with_role: bool | None


def _constant_service(call: ast.Call) -> str | None:
    if call.args and isinstance(call.args[0], ast.Constant) and call.args[0].value in SERVICES:
        return str(call.args[0].value)
    return None


def _func_name(call: ast.Call) -> str | None:
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


class Scanner(ast.NodeVisitor):
    """The AWS calls of one module: clients made (`*.client("svc", ...)`, factories) or passed
    in (parameters named like clients), and every operation used on them."""

    def __init__(self, path: str, factories: dict[str, str]) -> None:
        self.path = path
        self.factories = factories
        self.calls: list[Call] = []
        self.scopes: list[dict[str, Binding | None]] = [{}]
        self.names: list[str] = []
        self.self_attrs: dict[str, Binding] = {}

    # -- what makes a client
    def producer(self, node: ast.AST | None) -> Binding | None:
        if isinstance(node, ast.BoolOp):  # `client or make_s3_client()`
            return next((b for b in map(self.producer, node.values) if b), None)
        if isinstance(node, ast.Name):
            return self.lookup(node.id)
        if isinstance(node, ast.Attribute) and _is_self(node.value):
            return self.self_attrs.get(node.attr)
        if not isinstance(node, ast.Call):
            return None
        name = _func_name(node)
        if name == "client" and (service := _constant_service(node)):
            # aws.client(service, region, role_arn): a role ARN makes it the role's client
            role = len(node.args) >= 3 and not _is_none(node.args[2])
            role = role or any(k.arg == "role_arn" and not _is_none(k.value) for k in node.keywords)
            return Binding(service, role)
        if name in self.factories:
            return Binding(self.factories[name], False)
        return None

    def lookup(self, name: str) -> Binding | None:
        for scope in reversed(self.scopes):
            if name in scope:
                return scope[name]
        return None

    # -- scopes
    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer = self.self_attrs
        self.self_attrs = {}
        # `self.client = ...` anywhere in the class binds it for every method.
        for method in node.body:
            if not isinstance(method, ast.FunctionDef):
                continue
            params = self.params(method)
            for stmt in ast.walk(method):
                if isinstance(stmt, ast.Assign):
                    for target in stmt.targets:
                        if isinstance(target, ast.Attribute) and _is_self(target.value):
                            self.scopes.append(params)
                            binding = self.producer(stmt.value)
                            self.scopes.pop()
                            if binding:
                                self.self_attrs[target.attr] = binding
        self.names.append(node.name)
        self.generic_visit(node)
        self.names.pop()
        self.self_attrs = outer

    def params(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> dict[str, Binding | None]:
        scope: dict[str, Binding | None] = {}
        args = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        for arg in args:
            annotation = ast.unparse(arg.annotation) if arg.annotation else "Any"
            if arg.arg in CLIENT_NAMES and annotation == "Any":
                scope[arg.arg] = Binding(CLIENT_NAMES[arg.arg], None)
            else:
                scope[arg.arg] = None  # shadows an outer client of that name
        return scope

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self.scopes.append(self.params(node))
        self.names.append(node.name)
        for stmt in node.body:
            self.visit(stmt)
        self.names.pop()
        self.scopes.pop()

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]

    def bind(self, target: ast.AST, value: ast.AST | None) -> None:
        if isinstance(target, ast.Name):
            self.scopes[-1][target.id] = self.producer(value)

    def visit_Assign(self, node: ast.Assign) -> None:
        self.visit(node.value)
        for target in node.targets:
            self.bind(target, node.value)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        if node.value is not None:
            self.visit(node.value)
        self.bind(node.target, node.value)

    # -- what uses one
    def record(self, binding: Binding, operation: str, line: int) -> None:
        self.calls.append(
            Call(
                self.path,
                ".".join(self.names) or "<module>",
                line,
                binding.service,
                operation,
                binding.with_role,
            )
        )

    def visit_Attribute(self, node: ast.Attribute) -> None:
        binding = self.producer(node.value)
        if binding and node.attr not in NOT_OPERATIONS and node.attr != "get_paginator":
            self.record(binding, node.attr, node.lineno)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr == "get_paginator":
            binding = self.producer(func.value)
            arg = node.args[0] if node.args else None
            if binding and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                self.record(binding, arg.value, node.lineno)
        self.generic_visit(node)


def _is_self(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _is_none(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def product_files() -> list[Path]:
    files = [p for d in PRODUCT_DIRS for p in sorted((ROOT / d).rglob("*.py"))]
    return [p for p in files if p.relative_to(ROOT).as_posix() not in EXCLUDED]


def find_factories(trees: dict[str, ast.Module]) -> dict[str, str]:
    """Functions that return a new boto3 client of a fixed service (`make_s3_client`)."""
    found: dict[str, str] = {}
    for path, tree in trees.items():
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for ret in ast.walk(fn):
                if not (isinstance(ret, ast.Return) and isinstance(ret.value, ast.Call)):
                    continue
                if (b := Scanner(path, {}).producer(ret.value)) and b.with_role is False:
                    found[fn.name] = b.service
    return found


def scan(files: list[Path] | None = None, root: Path = ROOT) -> list[Call]:
    trees = {
        p.relative_to(root).as_posix(): ast.parse(p.read_text(), str(p))
        for p in (files or product_files())
    }
    factories = find_factories(trees)
    calls: list[Call] = []
    for path, tree in trees.items():
        scanner = Scanner(path, factories)
        scanner.visit(tree)
        calls += scanner.calls
    return calls


_OPERATIONS: dict[str, dict[str, str]] = {}


def iam_actions(service: str, method: str) -> list[str]:
    """The IAM actions one boto3 method needs (botocore's operation name; S3's exceptions)."""
    if service not in _OPERATIONS:
        model = botocore.session.get_session().get_service_model(service)
        _OPERATIONS[service] = {xform_name(op): op for op in model.operation_names}
    operation = _OPERATIONS[service].get(method)
    assert operation, f"{service}.{method} is not an AWS operation (scanner or code is wrong)"
    if service == "s3":
        assert operation in S3_ACTIONS, f"add the IAM action(s) of s3 {operation} to S3_ACTIONS"
        return S3_ACTIONS[operation]
    return [f"{service}:{operation}"]


def roles_of(call: Call) -> set[Role]:
    for where, roles in ROLE_TABLE:
        path, _, function = where.partition("::")
        if call.path.startswith(path) and (not function or call.function == function):
            if roles is None:
                return set()
            if call.path.startswith(NO_ROLE_CHAIN) or where in OWN_ACCOUNT_ONLY:
                return roles
            # a role ARN (or a client passed in: maybe one) means the production role acts
            return roles | ({PROD} if call.with_role is not False else set())
    raise AssertionError("unreachable: the table ends with a catch-all")


def required_actions(calls: list[Call]) -> dict[Role, dict[str, list[str]]]:
    """Role -> IAM action -> where the code needs it (implied actions included)."""
    needed: dict[Role, dict[str, list[str]]] = {role: {} for role in iamkit.POLICY_ROLES}
    for call in calls:
        for role in roles_of(call):
            for action in iam_actions(call.service, call.operation):
                if action in NEEDS_NO_PERMISSION:
                    continue
                for a in {action, *IMPLIED.get(action, ())}:
                    needed[role].setdefault(a, []).append(call.where)
    return needed


def allowed_actions(doc: dict[str, Any]) -> set[str]:
    return {a for s in statements(doc) if s["Effect"] == "Allow" for a in as_list(s["Action"])}


def missing_actions(doc: dict[str, Any], required: dict[str, list[str]]) -> dict[str, list[str]]:
    """The required actions no Allow statement of `doc` grants, with where each is needed."""
    allowed = allowed_actions(doc)
    return {
        action: where
        for action, where in sorted(required.items())
        if not any(fnmatch.fnmatchcase(action.lower(), a.lower()) for a in allowed)
    }


@pytest.fixture(scope="module")
def calls() -> list[Call]:
    return scan()


@pytest.fixture(scope="module")
def required(calls: list[Call]) -> dict[Role, dict[str, list[str]]]:
    return required_actions(calls)


def test_the_scanner_sees_the_calls_it_must(required: dict[Role, dict[str, list[str]]]) -> None:
    """Guards the scanner itself: these calls exist (a scanner that finds nothing would make
    every coverage check pass)."""
    expected = {
        ORCH: {
            "ec2:CreateSnapshots", "ec2:RunInstances", "ec2:DeleteSnapshot", "ec2:CopySnapshot",
            "s3:PutObject", "s3:ListBucket", "s3:RestoreObject", "kms:Encrypt",
            "secretsmanager:CreateSecret", "secretsmanager:GetSecretValue", "sts:AssumeRole",
            "secretsmanager:DeleteSecret", "secretsmanager:PutResourcePolicy", "kms:CreateKey",
        },
        WORKER: {
            "ebs:ListChangedBlocks", "ebs:ListSnapshotBlocks", "s3:PutObject", "s3:GetObject",
            "secretsmanager:GetSecretValue", "kms:Decrypt", "sts:AssumeRole",
        },
        PROD: {
            "ec2:CreateSnapshots", "ec2:ModifySnapshotAttribute", "ec2:TerminateInstances",
            "ebs:ListChangedBlocks", "kms:DescribeKey",
        },
    }  # fmt: skip
    for role, actions in expected.items():
        assert actions <= set(required[role]), (role, sorted(actions - set(required[role])))
    assert not any(a.startswith("ec2:") for a in required[WORKER]), "the worker calls no EC2"
    assert not any(a.startswith("s3:") for a in required[PROD]), "S3 is the backup account's"
    # the repository key never lands in a production account (workers.put_secret)
    assert not any(a.startswith("secretsmanager:") for a in required[PROD]), required[PROD]


@pytest.mark.parametrize("role", list(iamkit.POLICY_ROLES))
def test_every_call_is_allowed(role: Role, required: dict[Role, dict[str, list[str]]]) -> None:
    missing = missing_actions(iamkit.policy(role, VALUES), required[role])
    assert not missing, f"{role.value} policy lacks: " + "; ".join(
        f"{a} (used at {', '.join(w[:3])})" for a, w in missing.items()
    )


@pytest.mark.parametrize("role", list(iamkit.POLICY_ROLES))
def test_nothing_is_granted_that_no_call_needs(
    role: Role, required: dict[Role, dict[str, list[str]]]
) -> None:
    unused = allowed_actions(iamkit.policy(role, VALUES)) - set(required[role])
    assert not unused, f"{role.value} grants what no code calls: {sorted(unused)}"


@pytest.mark.parametrize("role", list(iamkit.POLICY_ROLES))
def test_the_coverage_check_reports_a_missing_action(
    role: Role, required: dict[Role, dict[str, list[str]]]
) -> None:
    """Remove each required action in turn from a copy of the policy: the check must name it
    (and where the code needs it)."""
    policy = iamkit.policy(role, VALUES)
    assert required[role]
    for action in required[role]:
        damaged = copy.deepcopy(policy)
        for s in damaged["Statement"]:
            s["Action"] = [a for a in as_list(s["Action"]) if a != action]
        damaged["Statement"] = [s for s in damaged["Statement"] if s["Action"]]
        missing = missing_actions(damaged, required[role])
        assert list(missing) == [action], (action, list(missing))
        assert missing[action] == required[role][action]


def test_the_scanner_follows_clients_the_way_the_code_uses_them(tmp_path: Path) -> None:
    """Made, passed in, kept on self, chained, paginated, shadowed by a dict of the same name."""
    src = tmp_path / "ec2backup" / "example.py"
    src.parent.mkdir()
    src.write_text(
        "import boto3\n"
        "from ec2backup import aws\n"
        "def make():\n"
        "    return boto3.client('sqs')\n"
        "def f(ec2: Any, region, role_arn):\n"
        "    ec2.describe_volumes()\n"
        "    sm = aws.client('secretsmanager', region, role_arn)\n"
        "    sm.delete_secret(SecretId='x')\n"
        "    aws.client('kms', region).describe_key(KeyId='k')\n"
        "    pages = aws.client('ec2', region).get_paginator('describe_instances').paginate()\n"
        "    call = ec2.describe_snapshots\n"
        "    ebs: dict = {}\n"
        "    ebs.update(a=1)\n"
        "    make().send_message(QueueUrl='q', MessageBody='m')\n"
        "class B:\n"
        "    def __init__(self, client=None):\n"
        "        self.client = client or boto3.client('s3')\n"
        "    def get(self):\n"
        "        return self.client.head_object(Bucket='b', Key='k')\n"
    )
    found = {(c.service, c.operation, c.with_role) for c in scan([src], tmp_path)}
    assert found == {
        ("ec2", "describe_volumes", None),
        ("secretsmanager", "delete_secret", True),
        ("kms", "describe_key", False),
        ("ec2", "describe_instances", False),
        ("ec2", "describe_snapshots", None),
        ("sqs", "send_message", False),
        ("s3", "head_object", False),
    }


def test_only_the_worker_reads_snapshot_blocks() -> None:
    """GetSnapshotBlock reads a volume's data: only the worker may, and only its own account's
    snapshots (no production role has it: the orchestrator holds those roles too)."""
    for role in iamkit.POLICY_ROLES:
        granted = allowed_actions(iamkit.policy(role, VALUES))
        assert ("ebs:GetSnapshotBlock" in granted) == (role == WORKER), role


def test_workers_delete_only_their_locks_and_checkpoints() -> None:
    """Issue 17: the worker role writes packs, index files, map pages and restore points but
    cannot delete them (a compromised worker cannot destroy backups)."""
    doc = iamkit.policy(Role.worker, VALUES)
    deleting = [
        s
        for s in statements(doc)
        if s["Effect"] == "Allow"
        and any(fnmatch.fnmatchcase("s3:DeleteObject", a) for a in as_list(s["Action"]))
    ]
    assert deleting
    for st in deleting:
        for resource in as_list(st["Resource"]):
            assert resource.endswith(("/locks/*", "/checkpoints/*")), resource

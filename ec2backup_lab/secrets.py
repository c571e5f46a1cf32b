"""Secrets Manager across accounts, as AWS allows it.

moto resolves a secret ARN in the caller's own account only. AWS lets a principal of another
account read a secret when (1) the secret's resource policy allows that principal, and (2) the
secret is encrypted with a customer-managed KMS key whose key policy lets that account decrypt
(a secret under the default `aws/secretsmanager` key cannot be read from another account).
The lab answers `GetSecretValue` on another account's ARN that way, evaluating the two
policies for the conditions the product uses: the principal's account (`arn:aws:iam::ID:root`
or a role of it) and `ec2:SourceInstanceARN` (the worker instance whose role keys signed the
request: the lab knows which instance it handed each set of keys to).
"""

from __future__ import annotations

import json
import threading
from typing import Any

DEFAULT_KEY_ALIAS = "alias/aws/secretsmanager"
_instance_of_key: dict[str, str] = {}  # access key id -> instance ARN
_lock = threading.Lock()


def record_instance_keys(access_key_id: str, instance_arn: str) -> None:
    with _lock:
        _instance_of_key[access_key_id] = instance_arn


def _principals(statement: dict[str, Any]) -> list[str]:
    principal = statement.get("Principal", {})
    if principal == "*":
        return ["*"]
    value = principal.get("AWS", []) if isinstance(principal, dict) else []
    return [value] if isinstance(value, str) else list(value)


def _actions(statement: dict[str, Any]) -> list[str]:
    value = statement.get("Action", [])
    return [value] if isinstance(value, str) else list(value)


def _principal_matches(principals: list[str], account: str, principal_arn: str) -> bool:
    return any(
        p in ("*", account, f"arn:aws:iam::{account}:root", principal_arn) for p in principals
    )


def _conditions_hold(statement: dict[str, Any], context: dict[str, str | None]) -> bool:
    for operator, pairs in statement.get("Condition", {}).items():
        if operator != "StringEquals":
            return False  # an operator the lab does not evaluate: not granted
        for key, wanted in pairs.items():
            values = [wanted] if isinstance(wanted, str) else list(wanted)
            if context.get(key) not in values:
                return False
    return True


def _allows(
    policy: str | None, action: str, account: str, principal_arn: str, context: dict[str, Any]
) -> bool:
    if not policy:
        return False
    doc = json.loads(policy)
    statements = doc.get("Statement", [])
    allowed = False
    for st in statements if isinstance(statements, list) else [statements]:
        service = action.split(":")[0]
        if not any(a in (action, f"{service}:*", "*") for a in _actions(st)):
            continue
        if not _principal_matches(_principals(st), account, principal_arn):
            continue
        if not _conditions_hold(st, context):
            continue
        if st.get("Effect") == "Deny":
            return False
        allowed = allowed or st.get("Effect") == "Allow"
    return allowed


def cross_account_get(access_key: str, body: bytes) -> tuple[bool, Any] | None:
    """(True, the GetSecretValue answer) or (False, AWS's refusal message) for a request on
    another account's secret; None when it is for the caller's own account (moto answers)."""
    from moto.iam.models import get_account_id_from
    from moto.kms.models import kms_backends
    from moto.secretsmanager.models import FakeSecret, secretsmanager_backends

    try:
        params = json.loads(body or b"{}")
    except ValueError:
        return None
    secret_id = str(params.get("SecretId", ""))
    parts = secret_id.split(":")
    if len(parts) < 7 or parts[0] != "arn" or parts[2] != "secretsmanager":
        return None
    region, owner = parts[3], parts[4]
    caller = get_account_id_from(access_key)
    if owner == caller:
        return None
    with _lock:
        instance_arn = _instance_of_key.get(access_key)
    denied = (
        False,
        f"User: {caller} is not authorized to perform: secretsmanager:GetSecretValue on "
        f"resource: {secret_id}",
    )
    backend = secretsmanager_backends[owner][region]
    secret = backend.secrets.get(secret_id)  # a full ARN, or a partial one (no suffix)
    if not isinstance(secret, FakeSecret):  # missing (AWS does not say so), or a replica
        return denied
    context = {"ec2:SourceInstanceARN": instance_arn, "aws:PrincipalAccount": caller}
    if not _allows(secret.policy, "secretsmanager:GetSecretValue", caller, "", context):
        return denied
    key_id = secret.kms_key_id or DEFAULT_KEY_ALIAS
    if key_id == DEFAULT_KEY_ALIAS or key_id.endswith(DEFAULT_KEY_ALIAS):
        return denied
    kms = kms_backends[owner][region]
    try:
        key = kms.describe_key(key_id)
    except Exception:
        return denied
    kms_context = {"kms:ViaService": f"secretsmanager.{region}.amazonaws.com"}
    if not _allows(key.policy, "kms:Decrypt", caller, "", kms_context):
        return denied
    value = backend.get_secret_value(
        secret_id=secret.arn,
        version_id=None,  # type: ignore[arg-type]  # moto's signature, its default None
        version_stage=None,  # type: ignore[arg-type]
    )
    return True, value

"""Assumed-role credentials that expire, as AWS's do.

moto's `AssumeRole` hands out keys that work forever. AWS's stop working when the role session
ends (1 hour by default, `DurationSeconds` up to the role's maximum): a long copy or wait that
keeps the first credentials fails with `ExpiredToken` (S3), `RequestExpired` (EC2) or
`ExpiredTokenException` (JSON services). The lab caps every role session at
`role_session_seconds` (`lab up --role-session-seconds`, default 3600), reports that expiry in
the response, and refuses requests signed with the keys afterwards.

Worker instances' own credentials (their instance role, handed to the agent process once) are
exempt: on EC2 the instance metadata service renews them.

ExternalId: moto ignores the role's trust policy. AWS refuses `AssumeRole` (AccessDenied) when
the trust policy's `sts:ExternalId` condition is not met. The lab checks it for roles that
exist in the lab's IAM and name such a condition (a role ARN that exists nowhere, as many tests
use, is still assumed: that part stays kind).
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any

from moto.sts.models import STSBackend

from ec2backup_lab.runtime import get_runtime

# What each wire protocol answers for expired role credentials (status 400 on AWS).
EXPIRED_CODES = {"ec2": "RequestExpired", "s3": "ExpiredToken"}
JSON_EXPIRED_CODE = "ExpiredTokenException"
QUERY_EXPIRED_CODE = "ExpiredToken"
EXPIRED_MESSAGE = "The security token included in the request is expired"

_expiry: dict[str, float] = {}


def expired(access_key_id: str) -> bool:
    deadline = _expiry.get(access_key_id)
    return deadline is not None and time.time() >= deadline


def expired_code(service: str, json_protocol: bool) -> str:
    if service in EXPIRED_CODES:
        return EXPIRED_CODES[service]
    return JSON_EXPIRED_CODE if json_protocol or service == "ebs" else QUERY_EXPIRED_CODE


def exempt(access_key_id: str) -> None:
    """Credentials that never expire in the lab (a worker's instance role)."""
    _expiry.pop(access_key_id, None)


def reset() -> None:
    _expiry.clear()


def _external_ids(role_arn: str) -> list[set[str]] | None:
    """The ExternalId sets the role's trust statements ask for (None: the role is unknown to
    the lab or names no ExternalId; an empty set in the list: a statement without one)."""
    from moto.iam.models import iam_backends

    parts = role_arn.split(":")
    if len(parts) < 6:
        return None
    try:
        role = iam_backends[parts[4]]["aws"].get_role_by_arn(role_arn)
    except Exception:
        return None
    raw = role.assume_role_policy_document or "{}"
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = json.loads(urllib.parse.unquote(raw))
    statements = doc.get("Statement", [])
    wanted: list[set[str]] = []
    for st in statements if isinstance(statements, list) else [statements]:
        if st.get("Effect") != "Allow":
            continue
        cond = st.get("Condition", {}).get("StringEquals", {})
        value = cond.get("sts:ExternalId")
        wanted.append(set([value] if isinstance(value, str) else value or []))
    if not any(wanted):
        return None
    return wanted


def external_id_denial(body: bytes) -> str | None:
    """AWS's refusal message when an AssumeRole request (query protocol) does not meet the
    role's ExternalId condition; None when it may proceed."""
    params = urllib.parse.parse_qs(body.decode("utf-8", "replace"))
    role_arn = (params.get("RoleArn") or [""])[0]
    external_id = (params.get("ExternalId") or [""])[0]
    wanted = _external_ids(role_arn)
    if wanted is None or any(not ids or external_id in ids for ids in wanted):
        return None
    return f"User is not authorized to perform: sts:AssumeRole on resource: {role_arn}"


def install() -> None:
    original = STSBackend.assume_role

    def assume_role(
        self: STSBackend,
        region_name: str,
        role_session_name: str,
        role_arn: str,
        policy: str,
        duration: int,
        external_id: str,
    ) -> Any:
        seconds = min(int(duration), int(get_runtime().role_session_seconds))
        role = original(
            self, region_name, role_session_name, role_arn, policy, seconds, external_id
        )
        _expiry[role.access_key_id] = time.time() + seconds
        return role

    STSBackend.assume_role = assume_role  # type: ignore[method-assign]

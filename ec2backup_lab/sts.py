"""Assumed-role credentials that expire, as AWS's do.

moto's `AssumeRole` hands out keys that work forever. AWS's stop working when the role session
ends (1 hour by default, `DurationSeconds` up to the role's maximum): a long copy or wait that
keeps the first credentials fails with `ExpiredToken` (S3), `RequestExpired` (EC2) or
`ExpiredTokenException` (JSON services). The lab caps every role session at
`role_session_seconds` (`lab up --role-session-seconds`, default 3600), reports that expiry in
the response, and refuses requests signed with the keys afterwards.

Worker instances' own credentials (their instance role, handed to the agent process once) are
exempt: on EC2 the instance metadata service renews them.
"""

from __future__ import annotations

import time
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

"""boto3 sessions and clients per (account role, Region), with AWS's standard retry mode.

Credentials: the process's own (the backup account) or, for another account, botocore
refreshable credentials from `sts:AssumeRole` on the role ARN a policy or session names: they
renew themselves before they expire (AWS's default role session is 1 hour, shorter than a long
copy or wait), so a client may be kept for as long as a call needs. Each role session is named
after the workflow the activity belongs to (`role_session`), so CloudTrail tells sessions apart;
an ExternalId per account comes from `EC2BACKUP_ROLE_EXTERNAL_IDS` (JSON: account id or role
ARN -> external id) or, failing that, from the installation configuration's `accounts`.
`AWS_ENDPOINT_URL` (the lab) is honoured by boto3 itself.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import datetime as dt
import json
import os
import re
import threading
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
from botocore.config import Config
from botocore.credentials import DeferredRefreshableCredentials
from botocore.exceptions import BotoCoreError, ClientError

# Standard retry mode: exponential backoff with jitter on throttling and 5xx, 8 attempts in
# total (AWS SDK default is 3; EBS direct and EC2 throttle under load, sessions must ride it out).
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 8}, s3={"addressing_style": "path"}
)
# botocore refreshes 15 minutes (advisory) / 10 minutes (mandatory) before expiry; a role
# session shorter than an hour refreshes at a quarter / an eighth of its length instead, so it
# is not renewed on every call.
ADVISORY_REFRESH_SECONDS, MANDATORY_REFRESH_SECONDS = 15 * 60, 10 * 60
ROLE_SESSION_NAME = "ec2backup"
# AWS: RoleSessionName is 2-64 characters of [\w+=,.@-].
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")
EXTERNAL_IDS_ENV = "EC2BACKUP_ROLE_EXTERNAL_IDS"
# Sessions kept (one per role, Region and role session name): bounded, a long-running
# orchestrator names sessions after every workflow it serves.
MAX_CACHED_SESSIONS = 256

_cache: collections.OrderedDict[tuple[str | None, str, str], boto3.Session] = (
    collections.OrderedDict()
)
_lock = threading.Lock()
_session_name: contextvars.ContextVar[str] = contextvars.ContextVar(
    "ec2backup_role_session_name", default=ROLE_SESSION_NAME
)


# Error codes that mean "try again later" (throttling, capacity, transient server faults).
TRANSIENT_CODES = {
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "RequestThrottledException",
    "RequestThrottled",
    "SlowDown",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "InternalServerException",
    "ConcurrentLimitExceededException",
    "Unavailable",
    "InsufficientInstanceCapacity",
    "ResourceLimitExceeded",
    "SnapshotCreationPerVolumeRateExceeded",
    "ConcurrentSnapshotLimitExceeded",
    "PendingVerification",
    # Role credentials that expired under a call: the refreshable credentials renew on the
    # next try (EC2 says RequestExpired, S3 ExpiredToken, JSON services ExpiredTokenException).
    "ExpiredToken",
    "ExpiredTokenException",
    "RequestExpired",
}


def account_of_role(role_arn: str) -> str:
    """The account id inside an IAM role ARN (arn:aws:iam::123456789012:role/name)."""
    parts = role_arn.split(":")
    if len(parts) < 6 or parts[2] != "iam" or not parts[4].isdigit():
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    return parts[4]


@contextlib.contextmanager
def role_session(name: str | None) -> Iterator[None]:
    """Name the role sessions opened inside (an activity: its workflow id)."""
    clean = _SESSION_NAME_BAD.sub("-", name or "")[:64]
    token = _session_name.set(clean if len(clean) >= 2 else ROLE_SESSION_NAME)
    try:
        yield
    finally:
        _session_name.reset(token)


def default_region(explicit: str | None = None) -> str | None:
    """The Region as the AWS CLI resolves it: the flag, `AWS_REGION`, `AWS_DEFAULT_REGION`,
    the `AWS_PROFILE` profile's `region`; then the installation's home Region."""
    from ec2backup import config

    return (
        explicit
        or os.environ.get("AWS_REGION")
        or boto3.Session().region_name
        or config.load().home_region
    )


def external_id(role_arn: str) -> str | None:
    """The ExternalId the role's trust policy asks for, if one is configured."""
    raw = os.environ.get(EXTERNAL_IDS_ENV)
    if not raw:
        from ec2backup import config

        account = config.load().account_for_role(role_arn)
        return account.external_id if account else None
    try:
        table = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{EXTERNAL_IDS_ENV} is not JSON: {exc}") from exc
    if not isinstance(table, dict):
        raise ValueError(f"{EXTERNAL_IDS_ENV} must map account ids or role ARNs to ids")
    value = table.get(role_arn) or table.get(account_of_role(role_arn))
    return str(value) if value else None


class RoleCredentials(DeferredRefreshableCredentials):
    """botocore's refreshable credentials over `sts:AssumeRole`, first fetched on first use."""

    def __init__(self, sts: Any, params: dict[str, str]) -> None:
        self._sts = sts
        self._params = params
        super().__init__(refresh_using=self._fetch, method="assume-role")

    def _fetch(self) -> dict[str, str]:
        creds = self._sts.assume_role(**self._params)["Credentials"]
        expiry: dt.datetime = creds["Expiration"]
        length = (expiry - dt.datetime.now(dt.UTC)).total_seconds()
        self._advisory_refresh_timeout = int(min(ADVISORY_REFRESH_SECONDS, length / 4))
        self._mandatory_refresh_timeout = int(min(MANDATORY_REFRESH_SECONDS, length / 8))
        return {
            "access_key": creds["AccessKeyId"],
            "secret_key": creds["SecretAccessKey"],
            "token": creds["SessionToken"],
            "expiry_time": expiry.isoformat(),
        }


def session(role_arn: str | None, region: str) -> boto3.Session:
    name = _session_name.get()
    key = (role_arn, region, name if role_arn else "")
    with _lock:
        cached = _cache.get(key)
        if cached is not None:
            _cache.move_to_end(key)
            return cached
    if role_arn is None:
        sess = boto3.Session(region_name=region)
    else:
        params = {"RoleArn": role_arn, "RoleSessionName": name}
        ext = external_id(role_arn)
        if ext:
            params["ExternalId"] = ext
        sts = boto3.Session(region_name=region).client("sts", config=RETRY_CONFIG)
        core = botocore.session.get_session()
        # botocore has no public setter for refreshable credentials; this slot is where its
        # own credential chain puts them (what e.g. boto3-refresh-session does too).
        core._credentials = RoleCredentials(sts, params)  # type: ignore[attr-defined]
        sess = boto3.Session(botocore_session=core, region_name=region)
    with _lock:
        _cache[key] = sess
        while len(_cache) > MAX_CACHED_SESSIONS:
            _cache.popitem(last=False)
    return sess


def client(service: str, region: str, role_arn: str | None = None) -> Any:
    return session(role_arn, region).client(service, config=RETRY_CONFIG)  # type: ignore[call-overload]


def caller_account(region: str, role_arn: str | None = None) -> str:
    if role_arn:
        return account_of_role(role_arn)
    return str(client("sts", region).get_caller_identity()["Account"])


def error_code(exc: BaseException) -> str:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", ""))
    return ""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: throttling, 5xx, connection trouble."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return error_code(exc) in TRANSIENT_CODES or status >= 500
    return isinstance(exc, BotoCoreError)

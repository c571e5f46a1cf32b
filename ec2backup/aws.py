"""boto3 sessions and clients per (account role, Region), with AWS's standard retry mode.

Credentials: the process's own (the backup account) or, for another account, temporary keys
from `sts:AssumeRole` on the role ARN a policy or session names, cached until near expiry.
`AWS_ENDPOINT_URL` (the lab) is honoured by boto3 itself.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

# Standard retry mode: exponential backoff with jitter on throttling and 5xx, 8 attempts in
# total (AWS SDK default is 3; EBS direct and EC2 throttle under load, sessions must ride it out).
RETRY_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 8}, s3={"addressing_style": "path"}
)
# Renew assumed-role credentials this long before they expire.
CREDENTIAL_MARGIN_SECONDS = 300
ROLE_SESSION_NAME = "ec2backup"

_cache: dict[tuple[str | None, str], tuple[float, boto3.Session]] = {}
_lock = threading.Lock()

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
}


def account_of_role(role_arn: str) -> str:
    """The account id inside an IAM role ARN (arn:aws:iam::123456789012:role/name)."""
    parts = role_arn.split(":")
    if len(parts) < 6 or parts[2] != "iam" or not parts[4].isdigit():
        raise ValueError(f"not an IAM role ARN: {role_arn!r}")
    return parts[4]


def session(role_arn: str | None, region: str) -> boto3.Session:
    key = (role_arn, region)
    with _lock:
        cached = _cache.get(key)
        if cached and cached[0] > time.time():
            return cached[1]
    if role_arn is None:
        sess = boto3.Session(region_name=region)
        expires = time.time() + 3600
    else:
        sts = boto3.Session(region_name=region).client("sts", config=RETRY_CONFIG)
        creds = sts.assume_role(RoleArn=role_arn, RoleSessionName=ROLE_SESSION_NAME)["Credentials"]
        sess = boto3.Session(
            aws_access_key_id=creds["AccessKeyId"],
            aws_secret_access_key=creds["SecretAccessKey"],
            aws_session_token=creds["SessionToken"],
            region_name=region,
        )
        expires = creds["Expiration"].timestamp() - CREDENTIAL_MARGIN_SECONDS
    with _lock:
        _cache[key] = (expires, sess)
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

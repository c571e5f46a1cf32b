"""Assumed-role credentials expire, as AWS's do, and the product's refresh themselves.

The lab caps role sessions at `role_session_seconds` (`lab up --role-session-seconds`, here set
through the control API for a few seconds) and then refuses the keys with each protocol's code.
`ec2backup.aws` hands out botocore refreshable credentials: a client kept past the session's
end keeps working, and each role session is named after the workflow it serves.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError
from lab_helpers import ACCOUNT_B, REGION, client, control_post, error_of

from ec2backup import aws

SESSION_SECONDS = 3
ROLE_B = f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup-test"


def _config(lab: Any, **settings: Any) -> dict[str, Any]:
    return dict(control_post(lab, "config", settings))


@pytest.fixture
def short_sessions(lab: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    assert _config(lab, role_session_seconds=SESSION_SECONDS)["role_session_seconds"] == 3
    for key, value in lab.env.items():
        monkeypatch.setenv(key, value)
    aws._cache.clear()
    yield
    _config(lab, role_session_seconds=3600)
    aws._cache.clear()


def test_lab_up_flags_set_the_session_and_start_snapshot_windows(lab: Any) -> None:
    """The session's lab was started with `--role-session-seconds 3600
    --start-snapshot-unknown-seconds 2` (tests/conftest.py): the endpoint runs with them."""
    with urllib.request.urlopen(f"{lab.aws_url}/_lab/config", timeout=30) as response:
        config = json.load(response)
    assert config["role_session_seconds"] == 3600
    assert config["start_snapshot_unknown_seconds"] == 2


def test_role_credentials_expire_with_each_services_code(lab: Any, short_sessions: None) -> None:
    sts = client(lab, "sts")
    before = time.time()
    creds = sts.assume_role(RoleArn=ROLE_B, RoleSessionName="lab-tests", DurationSeconds=3600)[
        "Credentials"
    ]
    # The response says when they stop working: what a refreshing client relies on.
    assert creds["Expiration"].timestamp() <= before + SESSION_SECONDS + 1
    keys = {
        "aws_access_key_id": creds["AccessKeyId"],
        "aws_secret_access_key": creds["SecretAccessKey"],
        "aws_session_token": creds["SessionToken"],
    }
    ec2, s3 = client(lab, "ec2", creds=keys), client(lab, "s3", creds=keys)
    sm = client(lab, "secretsmanager", creds=keys)
    ec2.describe_volumes()  # fine while the session lasts
    time.sleep(SESSION_SECONDS + 0.5)
    calls = {
        "RequestExpired": ec2.describe_volumes,
        "ExpiredToken": s3.list_buckets,
        "ExpiredTokenException": sm.list_secrets,
    }
    for code, call in calls.items():
        with pytest.raises(ClientError) as err:
            call()
        assert error_of(err.value) == (code, 400)
    # The caller's own (non-session) credentials are not affected.
    client(lab, "ec2").describe_volumes()


def test_product_clients_refresh_role_credentials(lab: Any, short_sessions: None) -> None:
    """A client kept past the role session's end still works (botocore refreshes it), and
    CloudTrail would see the workflow's id as the role session name."""
    with aws.role_session("restore-instance-1234abcd"):
        ec2 = aws.client("ec2", REGION, ROLE_B)
        sts = aws.client("sts", REGION, ROLE_B)
        ec2.describe_volumes()
        time.sleep(SESSION_SECONDS + 0.5)
        ec2.describe_volumes()  # would be RequestExpired with the first keys
        arn = sts.get_caller_identity()["Arn"]
    assert arn.endswith("/restore-instance-1234abcd"), arn


def test_expired_tokens_are_retried_not_permanent() -> None:
    """An ExpiredToken that still reaches a call is worth a retry with fresh credentials."""
    for code in ("ExpiredToken", "ExpiredTokenException", "RequestExpired"):
        exc = ClientError({"Error": {"Code": code, "Message": "expired"}}, "Call")
        assert aws.is_transient(exc)


def test_external_ids_per_account_or_role(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        aws.EXTERNAL_IDS_ENV, json.dumps({ACCOUNT_B: "ext-b", "arn:aws:iam::3:role/x": "ext-x"})
    )
    assert aws.external_id(ROLE_B) == "ext-b"
    assert aws.external_id("arn:aws:iam::3:role/x") == "ext-x"
    assert aws.external_id("arn:aws:iam::444444444444:role/y") is None
    monkeypatch.setenv(aws.EXTERNAL_IDS_ENV, "[1]")
    with pytest.raises(ValueError, match=aws.EXTERNAL_IDS_ENV):
        aws.external_id(ROLE_B)

"""Error classification for Temporal: what is retried and what is final."""

from __future__ import annotations

from botocore.exceptions import ClientError

from ec2backup.activity_support import classify
from ec2backup.errors import UserError
from ec2backup.repository.locks import RepositoryLocked


def test_a_locked_repository_is_retried_other_user_errors_are_final() -> None:
    locked = classify(RepositoryLocked("repository is locked by prune policy-a (pid 4)"))
    assert locked.type == "RepositoryLocked" and not locked.non_retryable
    bad = classify(UserError("--repo: no repository at s3://x/y"))
    assert bad.non_retryable and bad.type == "UserError"


def test_expired_role_credentials_are_retried() -> None:
    for code in ("ExpiredToken", "RequestExpired", "ExpiredTokenException"):
        err = classify(ClientError({"Error": {"Code": code, "Message": "expired"}}, "Call"))
        assert err.type == code and not err.non_retryable
    denied = classify(ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "Call"))
    assert denied.non_retryable

"""Error classification for Temporal: what is retried and what is final."""

from __future__ import annotations

import time

import pytest
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


def test_sync_activities_heartbeat_while_they_run_and_keep_their_detail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An orchestrator activity that is busy in one long call still heartbeats (so a killed
    orchestrator is noticed after the heartbeat timeout), repeating its last detail."""
    from datetime import timedelta

    from temporalio.testing import ActivityEnvironment

    from ec2backup import activity_support

    monkeypatch.setattr(activity_support, "LIVENESS_EVERY", timedelta(seconds=0.1))

    @activity_support.adapter
    def busy() -> str:
        activity_support.heartbeat("step 1 of 2")
        time.sleep(0.6)  # one long call, no heartbeat of its own
        return "done"

    beats: list[tuple[object, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    assert env.run(busy) == "done"
    assert beats[0] == ("step 1 of 2",)
    assert len(beats) >= 4 and all(b == ("step 1 of 2",) for b in beats)
    after = len(beats)
    time.sleep(0.3)
    assert len(beats) == after  # the thread stops with the activity

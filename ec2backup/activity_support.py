"""The Temporal helpers every activity shares, orchestrator and worker agent alike: error
classification, heartbeats and their throttle, the orchestrator's repository password.

Errors:

- `UserError` (bad input, missing resource) and permanent AWS errors (not found, access denied,
  invalid parameter) fail at once: `ApplicationError(non_retryable=True)`, typed by cause.
- Transient AWS errors (throttling, 5xx, connection trouble) are re-raised as retryable
  failures; boto3's standard retry mode has already backed off inside the call.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from temporalio import activity
from temporalio.exceptions import ApplicationError

from ec2backup import aws
from ec2backup.errors import UserError
from ec2backup.repository.locks import LockLost, RepositoryLocked

F = TypeVar("F", bound=Callable[..., Any])

# Heartbeats reach the server at most this often (the SDK default is up to 60 s). A running
# activity learns of a cancel only from a heartbeat's reply, so this bounds how long a cancel
# waits for an activity to notice; one small RPC per 5 s per running activity is cheap.
HEARTBEAT_THROTTLE = timedelta(seconds=5)
# A sync activity also heartbeats from a thread this often while it runs (repeating its last
# detail): a killed orchestrator is then noticed after the workflow's heartbeat timeout
# (workflows.common.LIVENESS_TIMEOUT), not after the activity's start-to-close timeout.
LIVENESS_EVERY = timedelta(seconds=5)
# The worker agent's activities repeat their last heartbeat every second: the shortest heartbeat
# timeout in use for them is 10 s (tests; production 60 s, ec2backup.workers).
AGENT_LIVENESS_EVERY = timedelta(seconds=1)
# An agent activity that reported nothing for this long is stuck, not waiting on a retry:
# botocore's standard mode makes 8 tries of at most 60 s (its read timeout) with at most 20 s
# of backoff each, under 11 minutes. Its repeats then stop and the heartbeat timeout replaces
# the worker. (Orchestrator activities have no such limit: some run long in one call.)
AGENT_STALL_LIMIT = timedelta(minutes=15)


class Liveness:
    """Heartbeats that keep saying "this activity's host is alive" while it waits.

    An activity heartbeats from its own loop, between steps; one step can take longer than the
    heartbeat timeout without anything being wrong: an orchestrator's long AWS call, or an
    agent's read or write that botocore retries against a throttling S3 or EBS (SlowDown: up
    to 20 s a try, 8 tries). Temporal would take the activity for lost (for the agent: the
    workflow would replace a live worker, which then waits on the same S3). Used as a context
    manager around the work, this repeats the activity's last heartbeat (`initial` before its
    first one; the same details, so an agent's only ever name a durable checkpoint) from a
    thread of its own every `every` seconds, and for at most `stall_limit` seconds after the
    last one (None: as long as the activity runs). Beats go through `heartbeat(*details)`.
    """

    def __init__(
        self,
        beat: Callable[..., None],
        initial: tuple[Any, ...] = (),
        every: float = AGENT_LIVENESS_EVERY.total_seconds(),
        stall_limit: float | None = AGENT_STALL_LIMIT.total_seconds(),
    ) -> None:
        self._beat = beat
        self._every = every
        self._stall_limit = stall_limit
        self._lock = threading.Lock()
        self._details = initial
        self._last_report = self._last_beat = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.repeated = 0  # beats sent by the thread (tests, logs)

    def heartbeat(self, *details: Any) -> None:
        """The activity's own heartbeat: sent now and remembered for the repeats."""
        # Sent under the lock, like the repeats: a repeat of older details never goes out
        # after newer ones (Temporal keeps the last heartbeat it got).
        with self._lock:
            self._details = details
            self._last_report = self._last_beat = time.monotonic()
            self._beat(*details)

    def _repeat(self) -> None:
        while not self._done.wait(self._every):
            with self._lock:
                now = time.monotonic()
                if self._stall_limit is not None and now - self._last_report > self._stall_limit:
                    continue  # stuck: let the heartbeat timeout say so
                if now - self._last_beat < self._every:
                    continue
                self._last_beat = now
                try:
                    self._beat(*self._details)
                    self.repeated += 1
                except Exception:  # the activity is ending (its context is gone): stop
                    return

    def __enter__(self) -> Liveness:
        # The activity's context (temporalio keeps it in a context variable) goes with the
        # thread, so `activity.heartbeat` works there.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._repeat,), name="activity-liveness", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()


# The Liveness of each running orchestrator activity (task token ->), for `heartbeat`.
_running: dict[bytes, Liveness] = {}


def heartbeat(detail: str) -> None:
    """Record progress (a text detail) from inside a running activity."""
    live = _running.get(activity.info().task_token)
    if live is not None:
        live.heartbeat(detail)
    else:
        activity.heartbeat(detail)


@contextlib.contextmanager
def _liveness() -> Any:
    """Heartbeat from a thread while the body runs (only inside an activity)."""
    if not activity.in_activity():
        yield
        return
    token = activity.info().task_token
    live = Liveness(activity.heartbeat, every=LIVENESS_EVERY.total_seconds(), stall_limit=None)
    _running[token] = live
    try:
        with live:
            yield
    finally:
        _running.pop(token, None)


def environment_password(url: str | None = None) -> str:
    """The orchestrator's EC2BACKUP_REPO_PASSWORD (never in payloads): what operations over
    several repositories use (an archive copy opens the hot and the archive repository)."""
    password = os.environ.get("EC2BACKUP_REPO_PASSWORD")
    if not password:
        raise ApplicationError(
            "the orchestrator has no repository password"
            + (f" for {url}" if url else "")
            + " (name its secret or `kms = true` under [[repositories]] in the configuration, "
            "or set EC2BACKUP_REPO_PASSWORD for `ec2backup worker`)",
            type="RepositoryPasswordMissing",
            non_retryable=True,
        )
    return password


def repository_password(url: str) -> str | None:
    """The orchestrator's key to one repository (never in payloads): the password from its
    configured secret (`[[repositories]] password_secret`), None for a KMS repository
    (`kms = true`: opened with the orchestrator's role), else EC2BACKUP_REPO_PASSWORD."""
    from ec2backup import config
    from ec2backup.repository.repo import repository_password as configured

    settings = config.load().repository(url)
    if settings is not None and settings.kms and not settings.password_secret:
        return None
    if settings is not None and settings.password_secret:
        password = configured(url)
        assert password is not None  # a configured secret yields its string or fails
        return password.decode()
    return environment_password(url)


def password_bytes(password: str | None) -> bytes | None:
    """A key as `Repository.open` takes it (None: the KMS key files)."""
    return password.encode() if password is not None else None


def classify(exc: BaseException) -> ApplicationError:
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, RepositoryLocked):
        # Another run holds the repository (a long prune): worth trying again later, unlike
        # the other user errors. Temporal's backoff spaces the attempts.
        return ApplicationError(str(exc), type="RepositoryLocked", non_retryable=False)
    if isinstance(exc, LockLost):
        # The lock went while we worked (refreshes failing, or removed): nothing was committed
        # after that; a new attempt takes a new lock and resumes from the last checkpoint.
        return ApplicationError(str(exc), type="LockLost", non_retryable=False)
    if isinstance(exc, UserError):
        return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
    if isinstance(exc, ClientError):
        code = aws.error_code(exc) or "ClientError"
        message = str(exc)
        return ApplicationError(message, type=code, non_retryable=not aws.is_transient(exc))
    if aws.is_transient(exc):
        return ApplicationError(str(exc), type=type(exc).__name__)
    return ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__)


def role_session() -> contextlib.AbstractContextManager[None]:
    """Role sessions opened by this activity are named after its workflow (CloudTrail)."""
    return aws.role_session(activity.info().workflow_id if activity.in_activity() else None)


def adapter(fn: F) -> F:
    """Wrap a sync activity body so every failure is classified, role sessions are named
    after the workflow, and it heartbeats while it runs (see LIVENESS_EVERY)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with role_session(), _liveness():
                return fn(*args, **kwargs)
        except ApplicationError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    return wrapper  # type: ignore[return-value]

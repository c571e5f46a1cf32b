"""What the workflows share: the control-plane retry policy, shielded cleanup, search
attributes, and the pause/resume signals."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from ec2backup.models.common import PauseInput, ResumeInput

# Control-plane calls: AWS retries inside boto3 (standard mode); Temporal retries the rest
# with backoff, a bounded number of times, so a misconfiguration fails instead of hanging.
CONTROL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=12,
)

# Orchestrator activities heartbeat while they run (activity_support.LIVENESS_EVERY): after an
# orchestrator is killed, its activities are retried elsewhere after this long, not after
# their start-to-close timeout (10 minutes and more).
LIVENESS_TIMEOUT = timedelta(seconds=30)


async def run_to_completion(coro: Coroutine[Any, Any, Any]) -> None:
    """Run cleanup to the end even if a cancellation arrives meanwhile. Temporal delivers a
    workflow cancel once: re-raise it after the cleanup so the run still ends CANCELED."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def host_lost(exc: BaseException) -> bool:
    """An agent activity timed out (heartbeat: the host died; schedule-to-start: it never
    came up): the worker is replaced, not the activity retried on its dead queue."""
    return isinstance(exc, ActivityError) and isinstance(exc.cause, TimeoutError)


def retryable(exc: BaseException) -> bool:
    cause = exc.cause if isinstance(exc, ActivityError) else None
    return isinstance(cause, ApplicationError) and not cause.non_retryable


T = TypeVar("T")
R = TypeVar("R")


def settle_round(
    items: list[T], results: list[R | BaseException], errors: int, max_errors: int
) -> tuple[list[tuple[T, R]], bool, int]:
    """Sort one round of agent activities run on one worker: (the items that succeeded with
    their results, whether the host was lost, the retryable errors so far). The first
    permanent failure (or one retryable error too many) is raised."""
    done: list[tuple[T, R]] = []
    lost = False
    for item, result in zip(items, results, strict=True):
        if isinstance(result, BaseException):
            if host_lost(result):
                lost = True
                continue
            if retryable(result) and errors < max_errors:
                errors += 1
                continue
            raise result
        done.append((item, result))
    return done, lost, errors


def cancel_requested() -> bool:
    """True once the workflow was asked to cancel. An activity awaited with
    WAIT_CANCELLATION_COMPLETED may then still end in a plain failure (it failed before it
    learned of the cancel): the workflow must end CANCELED all the same."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelled() -> None:
    """An activity awaited with WAIT_CANCELLATION_COMPLETED may finish normally after the
    (single) cancel request; the workflow must still stop there."""
    if cancel_requested():
        raise asyncio.CancelledError()


def ensure_search_attributes(kind: str, policy: str, instance_id: str | None = None) -> None:
    """Set SessionKind/PolicyName/InstanceId when the starter did not (e.g. `temporal workflow
    start` or the Web UI), so list queries by policy find every run however it was started."""
    with workflow.unsafe.imports_passed_through():
        from ec2backup.temporal import INSTANCE_ID, POLICY_NAME, SESSION_KIND

    current = workflow.info().typed_search_attributes
    updates = []
    if current.get(SESSION_KIND) is None:
        updates.append(SESSION_KIND.value_set(kind))
    if current.get(POLICY_NAME) is None:
        updates.append(POLICY_NAME.value_set(policy))
    if instance_id and current.get(INSTANCE_ID) is None:
        updates.append(INSTANCE_ID.value_set(instance_id))
    if updates:
        workflow.upsert_search_attributes(updates)


class Pausable:
    """Signals `pause` and `resume` (BackupSession, BackupPolicy): `_paused` is what the
    workflow checks where pausing is safe (between transfer rounds, before a child starts)."""

    _paused = False

    @workflow.signal(name="pause")
    def pause(self, req: PauseInput | None = None) -> None:
        self._paused = True

    @workflow.signal(name="resume")
    def resume(self, req: ResumeInput | None = None) -> None:
        self._paused = False

"""What the workflows share: the control-plane retry policy, shielded cleanup, search
attributes, and the pause/resume signals."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError

with workflow.unsafe.imports_passed_through():
    from activities import policy as policy_activities
    from ec2backup.models.authorization import AuthorizeInput, AuthorizeOutput, Outcome
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
    start` or the Web UI), so list queries by policy find every run however it was started.
    An empty `policy` (restores, the Janitor) sets no PolicyName."""
    with workflow.unsafe.imports_passed_through():
        from ec2backup.temporal import INSTANCE_ID, POLICY_NAME, SESSION_KIND

    current = workflow.info().typed_search_attributes
    updates = []
    if current.get(SESSION_KIND) is None:
        updates.append(SESSION_KIND.value_set(kind))
    if policy and current.get(POLICY_NAME) is None:
        updates.append(POLICY_NAME.value_set(policy))
    if instance_id and current.get(INSTANCE_ID) is None:
        updates.append(INSTANCE_ID.value_set(instance_id))
    if updates:
        workflow.upsert_search_attributes(updates)


# Authorization (an activity before any side effect), Region/AccountId and Outcome came after
# workflows were already running in deployed installations: histories recorded before them
# replay without these commands (workflow.patched), new runs record a marker and run them.
AUTHORIZE_PATCH = "authorize-and-outcome-v1"
AUTHORIZE_TIMEOUT = timedelta(minutes=2)


def guarded() -> bool:
    """True for runs that authorize their input and record their outcome (see the patch)."""
    return workflow.patched(AUTHORIZE_PATCH)


async def authorize(req: AuthorizeInput) -> AuthorizeOutput | None:
    """Check what the run is asked to touch against the installation configuration (an
    activity: loading it is I/O) and set the Region/AccountId search attributes from the
    answer. A refusal is a non-retryable `NotAuthorized` that fails the run at once."""
    if not guarded():
        return None
    with workflow.unsafe.imports_passed_through():
        from ec2backup.temporal import ACCOUNT_ID, REGION

    allowed: AuthorizeOutput = await workflow.execute_activity(
        policy_activities.authorize_request,
        req,
        start_to_close_timeout=AUTHORIZE_TIMEOUT,
        retry_policy=CONTROL_RETRY,
    )
    updates = [ACCOUNT_ID.value_set(allowed.account_ids)]
    if allowed.regions:
        updates.append(REGION.value_set(allowed.regions))
    workflow.upsert_search_attributes(updates)
    return allowed


def set_regions(regions: list[str]) -> None:
    """Region, for a run whose input names none (it learns it from its plan)."""
    if not guarded() or not regions:
        return
    with workflow.unsafe.imports_passed_through():
        from ec2backup.temporal import REGION

    workflow.upsert_search_attributes([REGION.value_set(sorted(set(regions)))])


def set_outcome(outcome: Outcome) -> None:
    if not guarded():
        return
    with workflow.unsafe.imports_passed_through():
        from ec2backup.temporal import OUTCOME

    workflow.upsert_search_attributes([OUTCOME.value_set(outcome)])


@contextmanager
def outcome_on_failure() -> Iterator[None]:
    """Around a run's body: a run that fails or is canceled while its code still runs records
    Outcome=failed (a terminated one runs no code: its status says it). Continue-as-new is no
    outcome, nor is the SDK evicting a cached run (neither is an Exception or a cancel)."""
    try:
        yield
    except (Exception, asyncio.CancelledError):
        set_outcome("failed")
        raise


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

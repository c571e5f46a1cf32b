"""What the workflows share: the control-plane retry policy and shielded cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

from temporalio.common import RetryPolicy

# Control-plane calls: AWS retries inside boto3 (standard mode); Temporal retries the rest
# with backoff, a bounded number of times, so a misconfiguration fails instead of hanging.
CONTROL_RETRY = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=30),
    maximum_attempts=12,
)


async def run_to_completion(coro: Coroutine[Any, Any, Any]) -> None:
    """Run cleanup to the end even if a cancellation arrives meanwhile. Temporal delivers a
    workflow cancel once: re-raise it after the cleanup so the run still ends CANCELED."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise


def cancel_requested() -> bool:
    """True once the workflow was asked to cancel. An activity awaited with
    WAIT_CANCELLATION_COMPLETED may then still end in a plain failure (it failed before it
    learned of the cancel): the workflow must end CANCELED all the same."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

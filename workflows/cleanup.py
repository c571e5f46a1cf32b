"""Shielded cleanup for workflows (deterministic: asyncio only)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


async def run_to_completion(coro: Coroutine[Any, Any, Any]) -> None:
    """Run cleanup to the end even if a cancellation arrives meanwhile. Temporal delivers a
    workflow cancel once: re-raise it after the cleanup so the run still ends CANCELED."""
    task = asyncio.ensure_future(coro)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await task
        raise

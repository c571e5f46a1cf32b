"""What every command family shares: running a coroutine, reaching Temporal."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client

from ec2backup.errors import UserError
from ec2backup.temporal import connect


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def client() -> Client:
    """A Temporal client, or one line naming the problem when the cluster cannot be reached."""
    try:
        return await connect()
    except Exception as exc:
        raise UserError(f"cannot reach Temporal: {exc}") from None

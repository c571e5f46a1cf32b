"""What every command family shares: running a coroutine, reaching Temporal."""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client

from ec2backup.errors import UserError
from ec2backup.temporal import connect


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def region(explicit: str | None, option: str = "--region") -> str:
    """The Region a command works in, resolved as the AWS CLI does (`aws.default_region`)."""
    from ec2backup import aws

    value = aws.default_region(explicit)
    if not value:
        raise UserError(
            f"{option}: no Region given (flag, AWS_REGION, AWS_DEFAULT_REGION, the AWS "
            "profile's region or the configuration's home_region)"
        )
    return value


async def client() -> Client:
    """A Temporal client, or one line naming the problem when the cluster cannot be reached."""
    try:
        return await connect()
    except Exception as exc:
        raise UserError(f"cannot reach Temporal: {exc}") from None

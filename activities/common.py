"""What every activity adapter shares: turning library errors into Temporal failures.

- `UserError` (bad input, missing resource) and permanent AWS errors (not found, access denied,
  invalid parameter) fail at once: `ApplicationError(non_retryable=True)`, typed by cause.
- Transient AWS errors (throttling, 5xx, connection trouble) are re-raised as retryable
  failures; boto3's standard retry mode has already backed off inside the call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from botocore.exceptions import ClientError
from temporalio.exceptions import ApplicationError

from ec2backup import aws
from ec2backup.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def classify(exc: BaseException) -> ApplicationError:
    if isinstance(exc, ApplicationError):
        return exc
    if isinstance(exc, UserError):
        return ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True)
    if isinstance(exc, ClientError):
        code = aws.error_code(exc) or "ClientError"
        message = str(exc)
        return ApplicationError(message, type=code, non_retryable=not aws.is_transient(exc))
    if aws.is_transient(exc):
        return ApplicationError(str(exc), type=type(exc).__name__)
    return ApplicationError(f"{type(exc).__name__}: {exc}", type=type(exc).__name__)


def adapter(fn: F) -> F:
    """Wrap a sync activity body so every failure is classified."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApplicationError:
            raise
        except Exception as exc:
            raise classify(exc) from exc

    return wrapper  # type: ignore[return-value]

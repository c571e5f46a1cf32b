"""Error types shared by the core, the CLI and the activities.

`UserError` is anything the operator can fix (bad input, missing resource, wrong password):
the CLI prints its message as one line and exits non-zero, without a traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the message names the field or resource."""

    exit_code = 2


class NotFoundError(UserError):
    """A named resource (instance, volume, snapshot, restore point) does not exist."""

    exit_code = 3


def short_error(exc: BaseException) -> str:
    """First line of an exception message (botocore messages can be long)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

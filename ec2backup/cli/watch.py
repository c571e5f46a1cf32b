"""Waiting for a workflow's result in the CLI while showing its `phase` query."""

from __future__ import annotations

import asyncio
from typing import Any

from rich.console import Console

# How often the spinner asks the workflow for its phase.
PHASE_POLL_SECONDS = 1.0


async def result_with_phase(handle: Any, label: str, console: Console) -> tuple[Any, str | None]:
    """(result, None) once the workflow ends, or (None, failure message) if it failed."""
    from ec2backup.views import failure_message

    result_task = asyncio.ensure_future(handle.result())
    with console.status(f"{label}: starting") as status:
        while not result_task.done():
            try:
                phase = await handle.query("phase", result_type=str)
                status.update(f"{label}: {phase}")
            except Exception:
                pass  # a query may race the start or the end of the workflow
            await asyncio.wait({result_task}, timeout=PHASE_POLL_SECONDS)
    try:
        return result_task.result(), None
    except Exception as exc:
        return None, failure_message(exc)


async def print_result(handle: Any, label: str, console: Console) -> int:
    """Wait (showing the phase), then print the result as JSON: the exit code (1 if failed)."""
    import json

    result, failed = await result_with_phase(handle, label, console)
    if failed:
        console.print(f"{label} failed: {failed}")
        return 1
    print(json.dumps(result.model_dump(), indent=2))
    reason = getattr(result, "source_reason", None)
    if reason:  # the catalog chose where to read from: say which (stderr; stdout is JSON)
        console.print(f"{label}: {reason}")
    return 0

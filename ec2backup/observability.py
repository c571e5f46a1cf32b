"""Tracing, metrics and logs of every Temporal client and worker (orchestrator, agent, CLI).

`connect_options()` is what `ec2backup.temporal.connect` adds to `Client.connect`: the SDK's
OpenTelemetry interceptor and the runtime that serves metrics, when they are configured.
"""

from __future__ import annotations

from typing import Any


def connect_options() -> dict[str, Any]:
    """Extra `Client.connect` keyword arguments (interceptors, runtime); none yet."""
    return {}

"""Fixtures of the BackupSession integration tests: one orchestrator per test module.

A module may set `ORCHESTRATOR_ENV = {NAME: value-or-None}` to change the orchestrator's
environment (None removes a variable, e.g. to run with the default transfer range size).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from session_helpers import Orchestrator, Workbench, env_for


@pytest.fixture(scope="module")
def wb(lab: Any, request: pytest.FixtureRequest) -> Iterator[Workbench]:
    name = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_").replace("_", "-")
    env = env_for(lab, getattr(request.module, "ORCHESTRATOR_ENV", {}))
    orchestrator = Orchestrator(env, Path(lab.dir) / f"orchestrator-{name}.log")
    bench = Workbench(lab=lab, env=env, name=name, orchestrator=orchestrator)
    bench.cli("lab", "fault", "--clear")
    orchestrator.start()
    try:
        yield bench
    finally:
        try:
            with contextlib.suppress(AssertionError):  # (a lab call, not a CLI process)
                bench.cli("lab", "fault", "--clear")
            bench.terminate_open_sessions()
        finally:
            orchestrator.stop()

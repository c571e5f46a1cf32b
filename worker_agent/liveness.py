"""Heartbeats that keep saying "this host is alive" while an agent activity waits.

An agent activity heartbeats from its own loop, after each run of blocks. When S3 or EBS slows
down, one call can take longer than the heartbeat timeout without the host being in trouble:
botocore's standard retry mode backs off up to 20 s a try, 8 tries (ec2backup.aws), and a pack
read throttled with SlowDown waits that long. The orchestrator would take the live host for
lost, release it and provision another worker, which waits on the same S3. `Liveness` repeats
the activity's last heartbeat (the same details, so only ever a durable checkpoint) from a
thread of its own while the activity runs; a loss of the host still stops the beats, and so
does an activity thread stuck for longer than any retry sequence (`STALL_LIMIT_SECONDS`).
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

# How often the thread repeats the last heartbeat when the activity sent none: the shortest
# heartbeat timeout in use is 10 s (tests); production uses 60 s (ec2backup.workers).
BEAT_EVERY_SECONDS = 1.0
# An activity that reported nothing for this long is stuck, not waiting on a retry: 8 tries of
# at most 60 s (botocore's read timeout) plus their backoff (at most 20 s each) is under 11
# minutes. The beats then stop and the heartbeat timeout replaces the worker.
STALL_LIMIT_SECONDS = 900.0


class Liveness:
    """Use as a context manager around an activity's work; send heartbeats through
    `heartbeat(*details)`. Between them, the last details (`initial` before the first) are
    repeated every `every` seconds, for at most `stall_limit` seconds after the last one."""

    def __init__(
        self,
        beat: Callable[..., None],
        initial: tuple[Any, ...] = (),
        every: float = BEAT_EVERY_SECONDS,
        stall_limit: float = STALL_LIMIT_SECONDS,
    ) -> None:
        self._beat = beat
        self._every = every
        self._stall_limit = stall_limit
        self._lock = threading.Lock()
        self._details = initial
        self._last_report = self._last_beat = time.monotonic()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self.repeated = 0  # beats sent by the thread (for tests and logs)

    def heartbeat(self, *details: Any) -> None:
        """The activity's own heartbeat: sent now and remembered for the repeats."""
        # Sent under the lock, like the repeats: a repeat of older details never goes out
        # after newer ones (Temporal keeps the last heartbeat it got).
        with self._lock:
            self._details = details
            self._last_report = self._last_beat = time.monotonic()
            self._beat(*details)

    def _repeat(self) -> None:
        while not self._done.wait(self._every):
            with self._lock:
                now = time.monotonic()
                if now - self._last_report > self._stall_limit:
                    continue  # stuck: let the heartbeat timeout say so
                if now - self._last_beat < self._every:
                    continue
                self._last_beat = now
                try:
                    self._beat(*self._details)
                    self.repeated += 1
                except Exception:  # the activity is ending (its context is gone): stop
                    return

    def __enter__(self) -> Liveness:
        # The activity's context (temporalio keeps it in a context variable) goes with the
        # thread, so `activity.heartbeat` works there.
        context = contextvars.copy_context()
        self._thread = threading.Thread(
            target=context.run, args=(self._repeat,), name="agent-liveness", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        if self._thread is not None:
            self._thread.join()

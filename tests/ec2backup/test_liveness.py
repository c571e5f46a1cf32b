"""Liveness repeats an activity's last heartbeat while the activity waits on something slow,
so a live host is not taken for lost; it stops when the activity is stuck or done."""

from __future__ import annotations

import threading
import time
from typing import Any

from temporalio import activity
from temporalio.testing import ActivityEnvironment

from ec2backup.activity_support import Liveness


class Beats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.sent: list[tuple[Any, ...]] = []

    def __call__(self, *details: Any) -> None:
        with self.lock:
            self.sent.append(details)


def test_the_last_details_are_repeated_while_the_activity_waits() -> None:
    beats = Beats()
    with Liveness(beats, initial=({"cursor": 0},), every=0.02) as live:
        time.sleep(0.15)  # a slow first call: the initial details go out meanwhile
        live.heartbeat({"cursor": 7})
        time.sleep(0.15)
    n = len(beats.sent)
    time.sleep(0.1)
    assert len(beats.sent) == n  # nothing after the activity ended
    first = beats.sent.index(({"cursor": 7},))
    assert first >= 3 and all(d == ({"cursor": 0},) for d in beats.sent[:first])
    assert len(beats.sent) - first >= 4
    assert all(d == ({"cursor": 7},) for d in beats.sent[first:])
    assert live.repeated == len(beats.sent) - 1


def test_a_stuck_activity_stops_the_beats() -> None:
    beats = Beats()
    with Liveness(beats, every=0.02, stall_limit=0.1):
        time.sleep(0.4)
    assert 2 <= len(beats.sent) <= 6, len(beats.sent)  # about stall_limit / every, then none


def test_beats_reach_temporal_from_the_liveness_thread() -> None:
    """The thread carries the activity's context: `activity.heartbeat` works there."""
    env = ActivityEnvironment()
    seen: list[Any] = []
    env.on_heartbeat = lambda *details: seen.append(details)

    @activity.defn
    def slow() -> None:
        with Liveness(activity.heartbeat, initial=("starting",), every=0.02):
            time.sleep(0.2)

    env.run(slow)
    assert len(seen) >= 3 and all(d == ("starting",) for d in seen), seen

"""Process-wide state of one running lab: its directory, settings, counters and faults.

moto keeps its backends in module globals, so the lab does too: one lab per process.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ec2backup_lab.blockstore import BlockStore
from ec2backup_lab.s3ext import DEFAULT_S3_RESTORE_READS, set_restore_reads
from ec2backup_lab.timing import RequestMeter, TimingSettings

# How long a new EC2 snapshot stays `pending` before `completed`, by default. Long enough
# that waiters really poll, short enough for tests.
DEFAULT_SNAPSHOT_PENDING_SECONDS = 1.0
DEFAULT_ROLE_SESSION_SECONDS = 3600.0
# After StartSnapshot, PutSnapshotBlock can answer "does not exist" for a while on AWS (up to
# about 2 minutes, coldsnap PR #56); the lab's window is short but never zero.
DEFAULT_START_SNAPSHOT_UNKNOWN_SECONDS = 2.0
# AWS: at most 20 snapshot copies in progress per destination Region (per account); the next
# CopySnapshot answers ResourceLimitExceeded (EBS user guide, "Copy an Amazon EBS snapshot").
DEFAULT_COPY_SNAPSHOT_CONCURRENCY = 20


@dataclass
class Fault:
    """An injected failure: the next `times` calls of `api` answer `code`."""

    api: str
    code: str
    times: int
    status: int | None = None
    message: str = "injected by the lab"


@dataclass
class Throttle:
    """A token bucket limiting `api` (or every API when None) to `rate` calls per second."""

    rate: float
    api: str | None = None
    tokens: float = 0.0
    last: float = field(default_factory=time.monotonic)

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class LabRuntime:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock = threading.RLock()
        self.snapshot_pending_seconds = DEFAULT_SNAPSHOT_PENDING_SECONDS
        # AWS's default role session (AssumeRole without DurationSeconds): 1 hour.
        self.role_session_seconds = DEFAULT_ROLE_SESSION_SECONDS
        self.start_snapshot_unknown_seconds = DEFAULT_START_SNAPSHOT_UNKNOWN_SECONDS
        self.copy_snapshot_concurrency = DEFAULT_COPY_SNAPSHOT_CONCURRENCY
        # The most snapshot copies seen in progress at once, per "account/Region" (metrics).
        self.copies_peak: dict[str, int] = {}
        self.s3_restore_reads = DEFAULT_S3_RESTORE_READS
        # `lab up --enforce-iam`: assumed roles get only what their policies allow (iam.py)
        self.enforce_iam = False
        # Added to real time where snapshot locks are evaluated (snapshotlocks.py): lets a
        # test run a cooling-off period or a lock out without waiting for it.
        self.lock_clock_offset_seconds = 0.0
        # The timing model (timing.py): off unless `timing` is set; EBS direct requests are
        # metered whatever it says.
        self.timing = TimingSettings()
        self.ebs_meter = RequestMeter()
        self.api_calls: Counter[str] = Counter()
        # Calls refused by a `lab fault --throttle` (per API): shows a test that it bit.
        self.throttled_calls: Counter[str] = Counter()
        self.faults: list[Fault] = []
        self.throttles: list[Throttle] = []
        self.endpoint_url = ""
        self.temporal_address = ""
        self.config_path = root / "lab-config.json"
        self.block_store = BlockStore(root)
        self.blocks_served = 0
        self._load_config()

    # -- settings ------------------------------------------------------------------------
    def _load_config(self) -> None:
        if self.config_path.exists():
            data = json.loads(self.config_path.read_text())
            self.apply_config(data, persist=False)

    def apply_config(self, data: dict[str, Any], persist: bool = True) -> dict[str, Any]:
        with self.lock:
            self.timing.apply(data)  # first: it validates all its keys before taking any
            if "snapshot_pending_seconds" in data:
                value = float(data["snapshot_pending_seconds"])
                if value < 0:
                    raise ValueError("snapshot_pending_seconds must be >= 0")
                self.snapshot_pending_seconds = value
            if "role_session_seconds" in data:
                seconds = float(data["role_session_seconds"])
                if seconds < 1:
                    raise ValueError("role_session_seconds must be >= 1")
                self.role_session_seconds = seconds
            if "start_snapshot_unknown_seconds" in data:
                window = float(data["start_snapshot_unknown_seconds"])
                if window < 0:
                    raise ValueError("start_snapshot_unknown_seconds must be >= 0")
                self.start_snapshot_unknown_seconds = window
            if "copy_snapshot_concurrency" in data:
                copies = int(data["copy_snapshot_concurrency"])
                if copies < 1:
                    raise ValueError("copy_snapshot_concurrency must be >= 1")
                self.copy_snapshot_concurrency = copies
            if "s3_restore_reads" in data:
                reads = int(data["s3_restore_reads"])
                if reads < 0:
                    raise ValueError("s3_restore_reads must be >= 0")
                self.s3_restore_reads = reads
                set_restore_reads(reads)
            if "temporal_address" in data:
                self.temporal_address = str(data["temporal_address"])
            if "lock_clock_offset_seconds" in data:
                self.lock_clock_offset_seconds = float(data["lock_clock_offset_seconds"])
            if "enforce_iam" in data:
                if not isinstance(data["enforce_iam"], bool):
                    raise ValueError("enforce_iam must be true or false")
                self.enforce_iam = data["enforce_iam"]
            if persist:
                self.config_path.write_text(json.dumps(self.config(), indent=2))
            return self.config()

    def config(self) -> dict[str, Any]:
        return {
            "snapshot_pending_seconds": self.snapshot_pending_seconds,
            "role_session_seconds": self.role_session_seconds,
            "start_snapshot_unknown_seconds": self.start_snapshot_unknown_seconds,
            "copy_snapshot_concurrency": self.copy_snapshot_concurrency,
            "s3_restore_reads": self.s3_restore_reads,
            "temporal_address": self.temporal_address,
            "enforce_iam": self.enforce_iam,
            "lock_clock_offset_seconds": self.lock_clock_offset_seconds,
            **self.timing.config(),
        }

    # -- faults --------------------------------------------------------------------------
    def take_fault(self, api: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.api == api and fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                    return fault
        return None

    def throttled(self, api: str) -> bool:
        with self.lock:
            refused = any(not t.allow() for t in self.throttles if t.api in (None, api))
            if refused:
                self.throttled_calls[api] += 1
            return refused

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()
            self.throttles.clear()


_RUNTIME: LabRuntime | None = None


def set_runtime(runtime: LabRuntime) -> None:
    global _RUNTIME
    _RUNTIME = runtime


def get_runtime() -> LabRuntime:
    if _RUNTIME is None:
        raise RuntimeError("the lab runtime is not initialised (run through ec2backup_lab.server)")
    return _RUNTIME

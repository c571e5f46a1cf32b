"""The lab's timing model: how long AWS takes, and how fast it lets you go.

Off by default (tests want a fast lab); `timing: true` in `/_lab/config` (`lab up --timing`)
turns it on for benchmarks. Every figure is a knob of `/_lab/config`, persisted with the other
runtime settings, with its AWS source in `KNOBS` and in docs/lab.md ("Timing model"):

- delays (scaled by `timing_scale`, so a benchmark can compress time): a worker's boot
  (RunInstances to its agent starting), CreateVolume `creating`, AttachVolume `attaching`, the
  latency of GetSnapshotBlock / PutSnapshotBlock;
- the first-read rate of volumes created from snapshots (lazy hydration; a rate, not scaled),
  enforced inside the agent process by `firstread.py`;
- EBS direct request limits per account and per snapshot (a sliding 1-second window per key):
  enforced whenever a limit is > 0, and with AWS's quotas for those left 0 once `timing` is on.
  Over a limit the lab answers as AWS: `RequestThrottledException` (HTTP 400) with `Reason`
  `ACCOUNT_THROTTLED` or `RESOURCE_LEVEL_THROTTLE`.

`RequestMeter` counts every EBS direct request whatever the switch: requests, throttled ones and
the peak admitted in any 1-second window (account-wide and per snapshot), for `/_lab/metrics`.

The lab's own loopback calls (`lab seed`) run `untimed()`: setting up a scene is not part of
the workload a benchmark measures.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ec2backup_lab.awserrors import LabAwsError


@dataclass(frozen=True)
class Knob:
    """One setting of the timing model: its default (AWS's figure) and where AWS says so."""

    name: str
    default: float
    source: str
    unit: str
    integer: bool = False


EBS_QUOTAS = "https://docs.aws.amazon.com/general/latest/gr/ebs-service.html"
EBS_PERFORMANCE = "https://docs.aws.amazon.com/ebs/latest/userguide/ebsapi-performance.html"
VOLUME_INITIALIZATION = "https://docs.aws.amazon.com/ebs/latest/userguide/initalize-volume.html"

KNOBS: dict[str, Knob] = {
    k.name: k
    for k in (
        # AWS publishes no boot time. Measured Linux AMIs: RunInstances 1.5 s, pending->running
        # 4.9 s, then about 23 s until sshd answers (the point cloud-init runs user-data).
        Knob(
            "worker_boot_seconds",
            30.0,
            "http://www.daemonology.net/blog/2021-08-12-EC2-boot-time-benchmarking.html",
            "s",
        ),
        # AWS publishes none; `creating` lasts seconds (AttachVolume refused while it does,
        # succeeding about 10 s later in the Kubernetes report).
        Knob(
            "volume_create_seconds",
            10.0,
            "https://github.com/kubernetes/kubernetes/issues/71750",
            "s",
        ),
        # AWS publishes none; the attachment reported `attaching` for over 10 s in this log.
        Knob(
            "volume_attach_seconds", 10.0, "https://github.com/litmuschaos/litmus-go/pull/354", "s"
        ),
        # AWS: the default initialization rate "fluctuates" and is not published; 100 MiB/s is
        # the lowest rate one can provision (100-300 MiB/s), a kind figure for the default.
        Knob("first_read_mib_s", 100.0, VOLUME_INITIALIZATION, "MiB/s"),
        # AWS's own planning figure: "Assuming PutSnapshotBlock latency is 100ms"; the lab adds
        # it to GetSnapshotBlock as well.
        Knob("ebs_direct_latency_ms", 100.0, EBS_PERFORMANCE, "ms"),
        # 0 = unlimited, or AWS's quota (`AWS_QUOTAS`) once `timing` is on.
        Knob("ebs_get_block_rps_account", 0, EBS_QUOTAS, "req/s", integer=True),
        Knob("ebs_get_block_rps_snapshot", 0, EBS_QUOTAS, "req/s", integer=True),
        Knob("ebs_put_block_rps_account", 0, EBS_QUOTAS, "req/s", integer=True),
        Knob("ebs_put_block_rps_snapshot", 0, EBS_QUOTAS, "req/s", integer=True),
        Knob("ebs_list_rps_account", 0, EBS_QUOTAS, "req/s", integer=True),
    )
}
# The EBS direct quotas (Service Quotas, "Amazon Elastic Block Store endpoints and quotas"):
# GetSnapshotBlock and PutSnapshotBlock 1,000 per second per account (adjustable) and per
# snapshot; ListChangedBlocks and ListSnapshotBlocks 50 per second per account, each.
AWS_QUOTAS: dict[str, int] = {
    "ebs_get_block_rps_account": 1000,
    "ebs_get_block_rps_snapshot": 1000,
    "ebs_put_block_rps_account": 1000,
    "ebs_put_block_rps_snapshot": 1000,
    "ebs_list_rps_account": 50,
}
# Knobs that are delays: multiplied by `timing_scale`. Rates and limits are not.
DELAY_KNOBS = {
    "worker_boot_seconds",
    "volume_create_seconds",
    "volume_attach_seconds",
    "ebs_direct_latency_ms",
}
# The share of a boot spent `pending` (daemonology's medians: 1.5 s API + 4.9 s pending of
# about 29 s to sshd); the instance is `running` for the rest, before its agent starts.
PENDING_SHARE_OF_BOOT = 0.2

# Which limits apply to which EBS direct API: (per-account knob, per-snapshot knob).
LIMITS: dict[str, tuple[str, str | None]] = {
    "GetSnapshotBlock": ("ebs_get_block_rps_account", "ebs_get_block_rps_snapshot"),
    "PutSnapshotBlock": ("ebs_put_block_rps_account", "ebs_put_block_rps_snapshot"),
    # one knob, one window per API: AWS's 50/s is per API
    "ListSnapshotBlocks": ("ebs_list_rps_account", None),
    "ListChangedBlocks": ("ebs_list_rps_account", None),
}
LATENCY_APIS = {"GetSnapshotBlock", "PutSnapshotBlock"}
WINDOW_SECONDS = 1.0
# Idle windows are dropped when there are more than this many (one per snapshot ever read).
MAX_IDLE_WINDOWS = 1000

_untimed = threading.local()


@contextlib.contextmanager
def untimed() -> Iterator[None]:
    """Requests handled inside (on this thread) take no modelled time: the lab's own setup."""
    previous = getattr(_untimed, "on", False)
    _untimed.on = True
    try:
        yield
    finally:
        _untimed.on = previous


class TimingSettings:
    """The knobs' values; `delay()` and `limit()` say what is in effect."""

    def __init__(self) -> None:
        self.timing = False
        self.timing_scale = 1.0
        self.values: dict[str, float] = {name: knob.default for name, knob in KNOBS.items()}

    def apply(self, data: dict[str, Any]) -> None:
        """Validate and take the timing keys of a `/_lab/config` body (all or nothing)."""
        values = dict(self.values)
        timing, scale = self.timing, self.timing_scale
        if "timing" in data:
            if not isinstance(data["timing"], bool):
                raise ValueError("timing must be true or false")
            timing = data["timing"]
        if "timing_scale" in data:
            scale = float(data["timing_scale"])
            if scale < 0:
                raise ValueError("timing_scale must be >= 0")
        for name, knob in KNOBS.items():
            if name not in data:
                continue
            raw = data[name]
            if isinstance(raw, bool) or not isinstance(raw, int | float):
                raise ValueError(f"{name} must be a number ({knob.unit})")
            if raw < 0:
                raise ValueError(f"{name} must be >= 0")
            if knob.integer and raw != int(raw):
                raise ValueError(f"{name} must be a whole number ({knob.unit})")
            values[name] = int(raw) if knob.integer else float(raw)
        self.timing, self.timing_scale, self.values = timing, scale, values

    def config(self) -> dict[str, Any]:
        return {"timing": self.timing, "timing_scale": self.timing_scale, **self.values}

    def active(self) -> bool:
        return self.timing and not getattr(_untimed, "on", False)

    def delay(self, name: str) -> float:
        """Seconds of the delay knob `name` in effect now (0 when timing is off)."""
        if not self.active():
            return 0.0
        seconds = self.values[name] / (1000.0 if name.endswith("_ms") else 1.0)
        return seconds * self.timing_scale

    def first_read_mib_s(self) -> float:
        """The first-read rate of new volumes from snapshots (0: not modelled)."""
        return self.values["first_read_mib_s"] if self.active() else 0.0

    def limit(self, name: str) -> int:
        """Requests per second allowed by limit knob `name` (0: unlimited)."""
        value = int(self.values[name])
        if value > 0:
            return value
        return AWS_QUOTAS[name] if self.timing else 0


@dataclass
class ApiCounters:
    requests: int = 0
    throttled: int = 0
    peak_rps_account: int = 0
    peak_rps_snapshot: int = 0


@dataclass
class RequestMeter:
    """Sliding 1-second windows of admitted EBS direct requests, per account (and Region: AWS's
    quotas are Regional) and per snapshot, with the counters `/_lab/metrics` shows."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    windows: dict[tuple[str, ...], deque[float]] = field(default_factory=dict)
    counters: dict[str, ApiCounters] = field(default_factory=dict)

    def _window(self, key: tuple[str, ...], now: float) -> deque[float]:
        window = self.windows.get(key)
        if window is None:
            if len(self.windows) > MAX_IDLE_WINDOWS:
                self._drop_idle(now)
            window = self.windows[key] = deque()
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        return window

    def _drop_idle(self, now: float) -> None:
        for key in [k for k, w in self.windows.items() if not w or w[-1] <= now - WINDOW_SECONDS]:
            del self.windows[key]

    def admit(
        self,
        api: str,
        account: str,
        snapshot: str | None,
        account_limit: int,
        snapshot_limit: int,
    ) -> str | None:
        """Count one request; None if admitted, else AWS's throttling reason. A refused
        request takes no room in the windows (only admitted ones count toward the rate)."""
        with self.lock:
            now = time.monotonic()
            counters = self.counters.setdefault(api, ApiCounters())
            counters.requests += 1
            per_account = self._window(("account", api, account), now)
            per_snapshot = self._window(("snapshot", api, snapshot), now) if snapshot else None
            if account_limit and len(per_account) >= account_limit:
                counters.throttled += 1
                return "ACCOUNT_THROTTLED"
            if per_snapshot is not None and snapshot_limit and len(per_snapshot) >= snapshot_limit:
                counters.throttled += 1
                return "RESOURCE_LEVEL_THROTTLE"
            per_account.append(now)
            counters.peak_rps_account = max(counters.peak_rps_account, len(per_account))
            if per_snapshot is not None:
                per_snapshot.append(now)
                counters.peak_rps_snapshot = max(counters.peak_rps_snapshot, len(per_snapshot))
            return None

    def snapshot_counters(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return {api: dict(vars(c)) for api, c in sorted(self.counters.items())}

    def reset(self) -> None:
        with self.lock:
            self.windows.clear()
            self.counters.clear()


def ebs_metrics(settings: TimingSettings, meter: RequestMeter) -> dict[str, Any]:
    """Per EBS direct API: requests, throttled, peaks, and the limits in effect (null: none)."""

    def limit(knob: str | None) -> int | None:
        return (settings.limit(knob) or None) if knob else None

    out: dict[str, Any] = {}
    counted = meter.snapshot_counters()
    for api in sorted(set(LIMITS) | set(counted)):
        entry: dict[str, Any] = dict(counted.get(api, vars(ApiCounters())))
        account_knob, snapshot_knob = LIMITS.get(api, (None, None))
        entry["limit_rps_account"] = limit(account_knob)
        entry["limit_rps_snapshot"] = limit(snapshot_knob)
        out[api] = entry
    return out


def admit_ebs_request(
    settings: TimingSettings,
    meter: RequestMeter,
    api: str,
    account: str,
    region: str,
    snapshot: str | None,
) -> None:
    """Meter one EBS direct request; raise AWS's throttling error over a limit, else wait out
    the modelled latency (on the request's own thread: the server is threaded)."""
    account_knob, snapshot_knob = LIMITS.get(api, (None, None))
    account_limit = settings.limit(account_knob) if account_knob else 0
    snapshot_limit = settings.limit(snapshot_knob) if snapshot_knob else 0
    snapshot_key = f"{account}/{region}/{snapshot}" if snapshot else None
    reason = meter.admit(api, f"{account}/{region}", snapshot_key, account_limit, snapshot_limit)
    if reason == "ACCOUNT_THROTTLED":
        raise LabAwsError(
            "RequestThrottledException",
            f"The {api} request rate of the account exceeds {account_limit} per second.",
            400,
            fields={"Reason": reason},
        )
    if reason is not None:
        raise LabAwsError(
            "RequestThrottledException",
            f"The {api} request rate of snapshot {snapshot} exceeds {snapshot_limit} per second.",
            400,
            fields={"Reason": reason},
        )
    if api in LATENCY_APIS:
        latency = settings.delay("ebs_direct_latency_ms")
        if latency > 0:
            time.sleep(latency)

"""One request budget per account, Region and API, shared by every session of the installation.

EBS direct quotas are per account and Region (GetSnapshotBlock: 1,000 requests/s by default,
shared by every reader; the per-snapshot 1,000/s is per volume). Sessions that each read at
their own pace throttle one another: past the quota AWS answers `RequestThrottledException`
and retries pile up. Here each (account, Region, API) has one `RateBudget` workflow (id
`budget_id`): a session asks it for a share before each round of EBS direct reads (`acquire`,
with how much it wants and for how long) and gets `shares`' max-min fair split of the quota
(`[performance] ebs_get_block_rps_account`, less `PACED_FRACTION`'s room for jitter); its
agent then paces its GetSnapshotBlock calls to that share (`RateLimiter`). A session that
ends releases its share; one that died is dropped when its lease runs out. More sessions:
each reads slower, none fails.

A share taken back is not taken back at once: the holder's agent asks for its share again every
`SHARE_POLL_SECONDS` and slows down then. So a newcomer is never lent what the others may
still be spending (`spendable`): until each holder whose share fell has had `FOLLOW_SECONDS`
to follow, the newcomer gets only what is left above their old shares (at first often
nothing: it waits), and the sum of what every holder may spend stays within the quota.

ListChangedBlocks and ListSnapshotBlocks have a budget each (50 requests/s per account, not
adjustable: `[performance] ebs_list_rps_account`). A session takes a share of both before it
plans (counting the blocks to read lists whole volumes) and renews the one its ranges use each
round, `LIST_WANT_RPS_PER_STREAM` per stream; every list call of the plan and of the ranges is
paced to it.

CopySnapshot is a budget of slots, not of a rate: at most 20 copies in progress per destination
Region and account (`[performance] copy_snapshot_concurrency`). A session's replication asks
for as many slots as it has snapshots and gets `slot_grant`'s part: never a slot another
session was granted and may be using; with none free it waits on a timer and asks again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GET_SNAPSHOT_BLOCK = "GetSnapshotBlock"
# Not a rate: snapshot copies in progress at once per destination Region (AWS: 20), shared the
# same way; a session copies at most its share at once (ec2backup.replication).
COPY_SNAPSHOT = "CopySnapshot"


LIST_CHANGED_BLOCKS = "ListChangedBlocks"
LIST_SNAPSHOT_BLOCKS = "ListSnapshotBlocks"
LIST_APIS = (LIST_CHANGED_BLOCKS, LIST_SNAPSHOT_BLOCKS)
# What one stream asks of a list budget: it lists a page per range and per 10,000 blocks (one
# every 20 s or so at EBS speeds), so 5/s lets a range start without waiting, and 10 sessions
# of one stream each fit in the 50/s; more sessions get less and start their ranges later.
LIST_WANT_RPS_PER_STREAM = 5.0


def list_api(parent_snapshot_id: str | None) -> str:
    """The list call a volume's reads make: changed blocks against a CBT base, else all."""
    return LIST_CHANGED_BLOCKS if parent_snapshot_id else LIST_SNAPSHOT_BLOCKS


def budget_id(account: str, region: str, api: str) -> str:
    return f"ec2backup-budget:{account}:{region}:{api}"


def shares(quota: float, wants: dict[str, float]) -> dict[str, float]:
    """Max-min fair: everyone gets an equal part of what is left, nobody more than it wants;
    what a modest holder leaves goes to the others."""
    out: dict[str, float] = {}
    left, todo = quota, dict(wants)
    while todo:
        part = left / len(todo)
        modest = {h: w for h, w in todo.items() if w <= part}
        if not modest:
            out.update({h: part for h in todo})
            return out
        for holder, want in modest.items():
            out[holder] = want
            left -= want
            del todo[holder]
    return out


# Rate shares split this much of the quota. AWS counts a call when it arrives; calls paced
# evenly leave evenly but arrive bunched by network and server jitter, so shares adding up to
# the whole quota would see a one-second window over it now and then (measured in the lab
# under load: 3 throttled of 2,050 at the whole quota).
PACED_FRACTION = 0.95


def paced_quota(api: str, quota: float) -> float:
    """What a rate budget's shares add up to (a slot budget's slots are all handed out)."""
    return quota if api == COPY_SNAPSHOT else quota * PACED_FRACTION


# How often a paced reader asks for its share again (worker_agent), and how long after its share
# fell a holder may still be spending the old one: a poll, the query's round trip and the gap
# between two heartbeats of a busy range, with room for a loaded host.
SHARE_POLL_SECONDS = 2.0
FOLLOW_SECONDS = 3 * SHARE_POLL_SECONDS


def spendable(quota: float, fair: dict[str, float], held: dict[str, float], holder: str) -> float:
    """What `holder` may spend now: its fair share (`shares`), but never what the other holders
    may still be spending: the larger of their fair share and the older, larger one `held`
    they were told before a newcomer came and have not yet had time to leave."""
    others = sum(max(share, held.get(h, 0.0)) for h, share in fair.items() if h != holder)
    return max(0.0, min(fair.get(holder, 0.0), quota - others))


def slot_grant(quota: float, want: float, others_granted: float, holders: int) -> int:
    """Slots for one holder of a slot budget: its fair part (at least one), no more than it
    wants, and never what the others were granted (they may be using it: a rate share can be
    taken back at the next call, a copy in progress cannot). 0: wait and ask again."""
    fair = max(1, int(quota // max(1, holders)))
    return max(0, min(int(want), fair, int(quota - others_granted)))


# The token bucket holds this much of a second's worth: a burst after a pause exceeds the rate
# in a one-second window by at most a tenth (the quota is judged per second).
BURST_SECONDS = 0.1


# A waiting caller looks at its rate again at least this often (a share of 0 grows back).
MAX_WAIT_SECONDS = 0.5


class RateLimiter:
    """At most about `rate` calls per second from any number of threads. `follow`, asked on
    every call and while a caller waits, gives the rate when it changed (None: no news; it
    keeps its own pace of asking); a rate of 0 holds every caller until it gives a new one."""

    def __init__(self, rate: float, follow: Callable[[], float | None] | None = None) -> None:
        self.rate = max(rate, 0.0)
        self.capacity = max(1.0, self.rate * BURST_SECONDS)
        self.tokens = 0.0  # start empty: a session's first second is paced too
        self.last = time.monotonic()
        self.lock = threading.Lock()
        self.follow = follow

    def set_rate(self, rate: float) -> None:
        """A new share (others came or went): from now on."""
        with self.lock:
            self.rate = max(rate, 0.0)
            self.capacity = max(1.0, self.rate * BURST_SECONDS)
            self.tokens = min(self.tokens, self.capacity)

    def acquire(self) -> None:
        while True:
            if self.follow is not None and (rate := self.follow()) is not None:
                self.set_rate(rate)
            with self.lock:
                now = time.monotonic()
                self.tokens = min(self.capacity, self.tokens + (now - self.last) * self.rate)
                self.last = now
                if self.tokens >= 1.0:
                    self.tokens -= 1.0
                    return
                wait = (1.0 - self.tokens) / self.rate if self.rate else MAX_WAIT_SECONDS
            time.sleep(min(wait, MAX_WAIT_SECONDS))

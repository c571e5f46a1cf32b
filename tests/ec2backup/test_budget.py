"""The shared request budget's split and pacing (ec2backup.budget)."""

from __future__ import annotations

import threading
import time

import pytest

from ec2backup.budget import RateLimiter, budget_id, shares, slot_grant, spendable


def test_shares_are_max_min_fair() -> None:
    assert shares(200, {"a": 500, "b": 500, "c": 500, "d": 500}) == {
        "a": 50, "b": 50, "c": 50, "d": 50,
    }  # fmt: skip
    # a modest holder keeps what it wants; the rest is split between the others
    out = shares(1000, {"small": 100, "x": 800, "y": 800})
    assert out == {"small": 100, "x": 450, "y": 450}
    assert shares(1000, {"only": 500}) == {"only": 500}
    assert shares(1000, {}) == {}
    assert budget_id("123456789012", "us-east-1", "GetSnapshotBlock") == (
        "ec2backup-budget:123456789012:us-east-1:GetSnapshotBlock"
    )


def test_the_limiter_paces_threads_to_its_rate() -> None:
    limiter = RateLimiter(100)
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(25):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    assert len(stamps) == 200
    assert elapsed >= 1.8  # 200 calls at 100/s (a tenth of a second of burst at most)
    # no one-second window holds much more than the rate
    stamps.sort()
    most = max(sum(1 for s in stamps if t0 <= s < t0 + 1.0) for t0 in stamps)
    assert most <= 100 * 1.1 + 1, most


@pytest.mark.parametrize("rate", [0.0, -1.0])
def test_a_zero_rate_holds_callers_until_it_follows_a_new_one(rate: float) -> None:
    """A share of 0 (others still spend what this holder is to get) holds every caller, asking
    `follow` while it waits; once it answers with a rate the callers go on at that rate."""
    asked: list[float] = []
    started = time.monotonic()

    def follow() -> float | None:
        asked.append(time.monotonic() - started)
        return 50.0 if asked[-1] >= 1.0 else None

    limiter = RateLimiter(rate, follow=follow)
    assert limiter.rate == 0.0
    done: list[float] = []
    threads = [
        threading.Thread(target=lambda: (limiter.acquire(), done.append(time.monotonic())))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(done) == 4 and min(done) - started >= 1.0, (done, asked)
    assert limiter.rate == 50.0 and len(asked) >= 2  # asked again while it waited


def test_a_newcomer_is_never_lent_what_others_may_still_spend() -> None:
    # a (alone: 200) and b came: both have a fair 100, but a may still spend its old 200
    fair = shares(200, {"a": 500, "b": 500})
    assert spendable(200, fair, {"a": 200}, "b") == 0
    assert spendable(200, fair, {"a": 200}, "a") == 100
    # once a followed (nothing held), b gets its fair share; the sum stays within the quota
    assert spendable(200, fair, {}, "b") == 100
    # four at 66.7 held, a fifth comes: it gets what is left above the held ones, here nothing
    fair5 = shares(200, dict.fromkeys("abcde", 500.0))
    held = dict.fromkeys("abcd", 200 / 3)
    assert spendable(200, fair5, held, "e") == 0
    # a modest holder's unused part is spendable by a newcomer at once
    fair3 = shares(200, {"small": 20, "x": 500, "y": 500})
    assert spendable(200, fair3, {"x": 180}, "y") == 0
    assert spendable(200, fair3, {"x": 100}, "y") == 80
    assert spendable(200, fair3, {"x": 180}, "small") == 0  # small came last: it waits too
    assert spendable(200, fair3, {}, "nobody") == 0


def test_slot_grants_never_lend_what_others_hold() -> None:
    # Alone: what it wants, up to the quota.
    assert slot_grant(20, 3, 0, 1) == 3 and slot_grant(20, 30, 0, 1) == 20
    # Three holders of 2 slots: the first two get one each, the third waits (0), never 3 in use.
    assert slot_grant(2, 3, 0, 1) == 2  # the first, alone when it asked
    assert slot_grant(2, 3, 2, 2) == 0  # the second: the first holds both
    assert slot_grant(2, 3, 0, 3) == 1  # the first again, after the others came: its fair part
    assert slot_grant(2, 3, 1, 3) == 1 and slot_grant(2, 3, 2, 3) == 0
    # Fair part at least one; never a fraction.
    assert slot_grant(20, 10, 0, 3) == 6 and slot_grant(20, 10, 18, 3) == 2

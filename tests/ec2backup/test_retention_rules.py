"""The pure retention rules: count/days for snapshot sets, daily/weekly/monthly/yearly for
restore points (restic's `forget --keep-*` semantics), in the policy's time zone."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from ec2backup.policy import GfsRetention, Retention
from ec2backup.retention import keep_by_age, keep_gfs

T0 = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def _ident(t: dt.datetime) -> dt.datetime:
    return t


def test_count_keeps_the_newest_n() -> None:
    items = [T0 + dt.timedelta(days=d) for d in range(6)]
    kept, expired = keep_by_age(items, _ident, Retention(count=2), T0)
    assert kept == [items[5], items[4]]
    assert sorted(expired) == items[:4]


def test_days_keep_what_is_younger_than_the_horizon() -> None:
    items = [T0 + dt.timedelta(days=d) for d in range(6)]
    now = items[5] + dt.timedelta(hours=1)
    kept, expired = keep_by_age(items, _ident, Retention(days=2), now)
    assert sorted(kept) == items[4:]  # day 3 is 2 days and 1 hour old
    assert sorted(expired) == items[:4]


def test_days_never_expire_the_newest() -> None:
    items = [T0, T0 + dt.timedelta(days=1)]
    kept, expired = keep_by_age(items, _ident, Retention(days=1), T0 + dt.timedelta(days=30))
    assert kept == [items[1]] and expired == [items[0]]


def test_gfs_daily_weekly_monthly() -> None:
    # One restore point a day for 70 days (2026-03-01 .. 2026-05-09).
    items = [T0 + dt.timedelta(days=d) for d in range(70)]
    rule = GfsRetention(daily=3, weekly=2, monthly=3, yearly=0)
    kept, expired = keep_gfs(items, _ident, rule, "UTC")
    dates = sorted(k.date().isoformat() for k in kept)
    # daily: May 9, 8, 7; weekly: the newest of this ISO week (May 9, a Saturday) and of the
    # previous one (Sunday May 3); monthly: May 9, April 30, March 31.
    assert dates == [
        "2026-03-31",
        "2026-04-30",
        "2026-05-03",
        "2026-05-07",
        "2026-05-08",
        "2026-05-09",
    ]
    assert len(kept) + len(expired) == len(items)


def test_gfs_buckets_follow_the_time_zone() -> None:
    # 23:30 UTC on Jan 1 is already Jan 2 in Tokyo: the two points are on different local days
    # in UTC but the same local day in Tokyo.
    a = dt.datetime(2026, 1, 1, 23, 30, tzinfo=dt.UTC)
    b = dt.datetime(2026, 1, 2, 10, 0, tzinfo=dt.UTC)
    rule = GfsRetention(daily=2, weekly=0, monthly=0, yearly=0)
    assert len(keep_gfs([a, b], _ident, rule, "UTC")[0]) == 2
    kept, expired = keep_gfs([a, b], _ident, rule, "Asia/Tokyo")
    assert kept == [b] and expired == [a]


@given(
    st.lists(st.integers(min_value=0, max_value=2000), min_size=1, max_size=60, unique=True),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 5),
    st.integers(0, 3),
)
def test_gfs_partitions_and_keeps_the_newest(
    hours: list[int], daily: int, weekly: int, monthly: int, yearly: int
) -> None:
    if not (daily or weekly or monthly or yearly):
        daily = 1
    items = [T0 + dt.timedelta(hours=13 * h) for h in hours]
    rule = GfsRetention(daily=daily, weekly=weekly, monthly=monthly, yearly=yearly)
    kept, expired = keep_gfs(items, _ident, rule, "Europe/Berlin")
    assert sorted(kept + expired) == sorted(items)
    assert max(items) in kept
    assert len(kept) <= 1 + daily + weekly + monthly + yearly
    # With the daily rule alone: the newest point of each of the `daily` latest local days.
    if not (weekly or monthly or yearly):
        berlin = ZoneInfo("Europe/Berlin")
        newest_of_day: dict[dt.date, dt.datetime] = {}
        for t in items:
            d = t.astimezone(berlin).date()
            newest_of_day[d] = max(t, newest_of_day.get(d, t))
        expected = [newest_of_day[d] for d in sorted(newest_of_day, reverse=True)[:daily]]
        assert sorted(kept) == sorted(expected)

"""The ransomware signal's verdicts (ec2backup.anomaly), on hand-made volume statistics."""

from __future__ import annotations

import datetime as dt

from ec2backup import anomaly, reaction
from ec2backup.repository.restorepoint import (
    AnomalySignal,
    Resolution,
    RestorePoint,
    VolumeMetadata,
    VolumeRecord,
    VolumeStats,
)

TOTAL = 2048  # blocks of a 1 GiB volume
T0 = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)


def record(read: int, new: int, incompressible: int, incremental: bool = True) -> VolumeRecord:
    return VolumeRecord(
        name="vol-1",
        device="/dev/sdf",
        size=TOTAL * 512 * 1024,
        pages=[None],
        stats=VolumeStats(
            blocks_total=TOTAL,
            blocks_read=read,
            blocks_new=new,
            blocks_incompressible=incompressible,
        ),
        metadata=VolumeMetadata(
            source_volume_id="vol-1", parent_snapshot_id="snap-0" if incremental else None
        ),
    )


def point(rec: VolumeRecord, day: int, verdict: str | None = None) -> RestorePoint:
    signal = AnomalySignal(verdict=verdict) if verdict else None  # type: ignore[arg-type]
    return RestorePoint(time=T0 + dt.timedelta(days=day), volumes=[rec], anomaly=signal)


HISTORY = [
    point(record(600, 600, 250, incremental=False), 0),  # the full: 42% incompressible
    point(record(100, 100, 40), 1),
    point(record(110, 105, 42), 2),
]


def test_first_backup_has_no_baseline() -> None:
    assert anomaly.assess([record(600, 600, 600, incremental=False)], []).verdict == "no-baseline"


def test_an_ordinary_incremental_is_clean() -> None:
    out = anomaly.assess([record(102, 100, 41)], HISTORY)
    assert out.verdict == "clean" and out.reasons == [] and out.baseline_points == 3


def test_encryption_in_place_is_an_anomaly_with_its_figures() -> None:
    out = anomaly.assess([record(410, 410, 410)], HISTORY)
    assert out.verdict == "anomaly"
    (reason,) = out.reasons
    assert (
        "vol-1 (/dev/sdf)" in reason
        and "100% of 410 new blocks" in reason
        and "usually 40%" in reason
    )


def test_a_volume_that_always_writes_incompressible_data_is_not_flagged() -> None:
    media = [point(record(100, 100, 97), d) for d in range(3)]
    assert anomaly.assess([record(100, 100, 99)], media).verdict == "clean"


def test_mass_change_with_a_rise_of_incompressible_blocks_is_flagged() -> None:
    out = anomaly.assess([record(500, 500, 320)], HISTORY)  # 24% changed, 64% incompressible
    assert out.verdict == "anomaly" and "changed" in out.reasons[0]
    # an upgrade: as many blocks, but compressible ones
    assert anomaly.assess([record(500, 500, 200)], HISTORY).verdict == "clean"


def test_few_new_blocks_say_nothing() -> None:
    assert anomaly.assess([record(5, 5, 5)], HISTORY).verdict == "clean"


def test_flagged_points_are_not_the_baseline_and_end_the_clean_ones() -> None:
    attacked = point(record(410, 410, 410), 3, verdict="anomaly")
    # after the attack, a second encrypted incremental is still judged against the old norm
    assert anomaly.assess([record(300, 300, 300)], [*HISTORY, attacked]).verdict == "anomaly"
    after = point(record(100, 100, 40), 4, verdict="clean")
    points = [(f"rp{i}", p) for i, p in enumerate([*HISTORY, attacked, after])]
    assert anomaly.last_clean(points) == "rp2"
    assert anomaly.last_clean(points[:3]) == "rp2"
    assert anomaly.last_clean([("rp0", attacked)]) is None


def test_lock_last_clean_holds_the_clean_point_and_the_first_anomaly() -> None:
    points = [
        ("a", point(record(600, 600, 250, incremental=False), 0, "no-baseline")),
        ("b", point(record(100, 100, 40), 1, "clean")),
        ("c", point(record(410, 410, 410), 2, "anomaly")),
        ("d", point(record(100, 100, 40), 3, "clean")),  # quiet again: holds encrypted blocks
        ("e", point(record(400, 400, 400), 4, "anomaly")),
    ]
    held = reaction.held_until(points[::-1], hold_days=30)
    assert held is not None
    assert (held.last_clean, held.first_anomaly) == ("b", "c")
    assert held.until == T0 + dt.timedelta(days=2 + 30)
    assert reaction.held_until(points[:2], hold_days=30) is None  # no anomaly: nothing held
    assert reaction.held_until(points[2:3], hold_days=30) is None  # no clean point before it


def test_a_resolved_anomaly_counts_as_clean() -> None:
    attacked = point(record(410, 410, 410), 2, "anomaly")
    points = [
        ("b", point(record(100, 100, 40), 1, "clean")),
        ("c", attacked),
        ("d", point(record(100, 100, 40), 3, "clean")),
    ]
    assert anomaly.last_clean(points) == "b"
    assert attacked.anomaly is not None
    attacked.anomaly.resolved = Resolution(reason="encrypted on purpose")
    assert anomaly.last_clean(points) == "d"
    assert reaction.held_until(points, hold_days=30) is None
    assert "resolved" not in attacked.model_dump_json()  # never stored in the restore point

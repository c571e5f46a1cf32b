"""The lab-session rows of `make bench` (bench/sessions.py): workflow histories to timelines,
measurements to rows in the shared figure shape, passes and fails. Pure: no lab is started."""

from __future__ import annotations

from typing import Any

from bench import sessions
from bench.sessions import (
    Budget,
    Copies,
    DataPath,
    Incremental,
    Measurements,
    RestoreRun,
    Strategy,
    figures,
    format_rows,
    timeline,
)

SHAPE = ["unit", "ec2backup", "baseline", "baseline_is", "ratio", "ratio_is", "target", "pass"]


def _event(eid: int, t: str, kind: str, **attrs: Any) -> dict[str, Any]:
    return {"eventId": str(eid), "eventTime": f"2026-12-03T15:14:{t}Z", kind: attrs}


def _scheduled(eid: int, t: str, name: str) -> dict[str, Any]:
    return _event(eid, t, "activityTaskScheduledEventAttributes", activityType={"name": name})


def _started(eid: int, t: str, sched: int) -> dict[str, Any]:
    return _event(eid, t, "activityTaskStartedEventAttributes", scheduledEventId=str(sched))


def _completed(eid: int, t: str, sched: int) -> dict[str, Any]:
    return _event(eid, t, "activityTaskCompletedEventAttributes", scheduledEventId=str(sched))


def test_timeline_spans_from_first_start_to_last_close_of_each_activity() -> None:
    history = {
        "events": [
            _event(1, "40.000000001", "workflowExecutionStartedEventAttributes"),
            _scheduled(2, "41.000000000", "provision_worker"),
            _started(3, "41.500000000", 2),
            _completed(4, "43.000000000", 2),
            _scheduled(5, "43.100000000", "agent_transfer_range"),
            _scheduled(6, "43.100000000", "agent_transfer_range"),
            # Started events are written with the completion: out of order in time.
            _started(7, "44.000000000", 5),
            _completed(8, "45.000000000", 5),
            _started(9, "44.200000000", 6),
            _completed(10, "50.250000000", 6),
            _event(11, "52.000000000", "workflowExecutionCompletedEventAttributes"),
        ]
    }
    tl = timeline([history])
    assert round(tl.wall_s, 3) == 12.0
    assert round(tl.span_s("agent_transfer_range") or 0, 3) == 6.25
    assert round(tl.span_s("provision_worker") or 0, 3) == 1.5
    assert tl.span_s("agent_write_volume") is None


def test_timeline_of_a_workflow_that_continued_as_new_covers_every_run() -> None:
    first = {
        "events": [
            _event(1, "00.000000000", "workflowExecutionStartedEventAttributes"),
            _scheduled(2, "01.000000000", "agent_transfer_range"),
            _started(3, "02.000000000", 2),
            _completed(4, "10.000000000", 2),
        ]
    }
    # The same event ids again in the next run: they name that run's own activities.
    second = {
        "events": [
            _event(1, "11.000000000", "workflowExecutionStartedEventAttributes"),
            _scheduled(2, "11.500000000", "agent_transfer_range"),
            _started(3, "12.000000000", 2),
            _completed(4, "20.000000000", 2),
            _event(5, "21.000000000", "workflowExecutionCompletedEventAttributes"),
        ]
    }
    tl = timeline([first, second])
    assert tl.runs == 2 and round(tl.wall_s, 3) == 21.0
    assert round(tl.span_s("agent_transfer_range") or 0, 3) == 18.0


def _all() -> Measurements:
    return Measurements(
        data_path=DataPath(data_bytes=512 * 2**20, transfer_s=8.0, session_wall_s=15.0,
                           image_backup_s=10.0),
        restore=RestoreRun(data_bytes=512 * 2**20, write_s=4.0, workflow_s=10.0,
                           image_restore_s=5.0, verified=True),
        incremental=Incremental(full_s=90.0, incremental_s=10.0, changed_blocks=160,
                                blocks_read=160, read="ebs-direct"),
        copies=Copies(data_bytes=2**30, one_s=60.0, two_s=40.0),
        strategy={
            "full": Strategy("ebs-direct", "ebs-direct: faster", 50.0, "attached", 80.0, 2048),
            "incremental": Strategy("ebs-direct", "ebs-direct: faster", 10.0, "attached",
                                    9.0, 20),
        },
        budget=Budget(sessions=4, completed=4, requests=2048, throttled=0,
                      peak_rps_account=180, quota=200, blocks_read=2048),
    )  # fmt: skip


def test_every_measured_row_has_the_shared_shape_and_its_verdict() -> None:
    rows = figures(_all())
    assert list(rows) == [
        "session_vs_data_path",
        "restore_from_backup_mb_s",
        "session_incremental_s",
        "copies_speedup",
        "read_strategy_full",
        "read_strategy_incremental",
        "shared_budget",
    ]
    for row in rows.values():
        assert list(row)[: len(SHAPE)] == SHAPE
    # 64 MiB/s against 51.2 MiB/s of the same bytes
    assert rows["session_vs_data_path"]["ratio"] == 1.25 and rows["session_vs_data_path"]["pass"]
    assert rows["restore_from_backup_mb_s"]["ratio"] == 1.25
    assert rows["session_incremental_s"]["ratio"] == 9.0
    assert rows["copies_speedup"]["ratio"] == 1.5 and not rows["copies_speedup"]["pass"]
    assert rows["read_strategy_full"]["pass"]
    assert rows["read_strategy_incremental"]["ratio"] == 0.9
    assert not rows["read_strategy_incremental"]["pass"]  # auto's pick was the slower one
    assert rows["shared_budget"]["pass"] and rows["shared_budget"]["ratio"] == 0.9
    table = format_rows(rows)
    assert len(table.splitlines()) == 1 + len(rows)


def test_rows_not_measured_are_left_out() -> None:
    m = Measurements(copies=Copies(data_bytes=2**30, one_s=60.0, two_s=30.0))
    m.missing["shared_budget"] = "the orchestrator exited"
    rows = figures(m)
    assert list(rows) == ["copies_speedup"] and rows["copies_speedup"]["pass"]
    assert figures(Measurements()) == {}


def test_a_throttled_request_a_failed_session_or_an_unverified_restore_fails_its_row() -> None:
    m = _all()
    assert m.budget is not None and m.restore is not None
    m.budget.throttled = 1
    assert not figures(m)["shared_budget"]["pass"]
    m.budget.throttled, m.budget.completed = 0, 3
    assert not figures(m)["shared_budget"]["pass"]
    m.restore.verified = False
    assert not figures(m)["restore_from_backup_mb_s"]["pass"]


def test_a_zero_time_gives_no_ratio_and_no_pass() -> None:
    m = Measurements(
        data_path=DataPath(data_bytes=0, transfer_s=0.0, session_wall_s=1.0, image_backup_s=0.0)
    )
    row = figures(m)["session_vs_data_path"]
    assert row["ratio"] is None and row["pass"] is False
    assert "-" in format_rows({"session_vs_data_path": row})


def test_rows_names_the_selection_of_main() -> None:
    assert "read_strategy" in sessions.ROWS and "shared_budget" in sessions.ROWS
    assert sessions.PHASE_A | sessions.PHASE_B | {"shared_budget"} == set(sessions.ROWS)


def test_the_reason_of_a_failed_command_is_its_failure_line() -> None:
    said = (
        "backup-cf617c0be2f84a91\nphase: transferring  0/? bytes\n"
        "session backup-cf617c0be2f84a91 FAILED: DeviceMismatch: volume vol-9: no device found\n"
        "watched for 20.1s\n"
    )
    assert sessions._failure_line(said).endswith(
        "FAILED: DeviceMismatch: volume vol-9: no device found"
    )
    assert (
        sessions._failure_line("Error: no such restore point\n") == "Error: no such restore point"
    )
    assert sessions._failure_line("all fine\n") == ""

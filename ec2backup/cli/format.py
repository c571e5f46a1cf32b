"""How the CLI prints: tables, durations, byte counts, run summaries."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from ec2backup.models.policy import BackupPolicyOutput


def table_console() -> Console:
    """stdout; when it is not a terminal (a pipe, a log), wide enough not to fold rows."""
    import os
    import sys

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=250)


def bytes_text(read: int, stored: int) -> str:
    from ec2backup.progress import human_bytes

    text = human_bytes(stored)
    return f"{text} ({human_bytes(read)} read)" if read else text


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def when_text(iso: str | None) -> str:
    """An ISO time from JSON rows (UTC) as `2024-05-01 03:00:12Z`."""
    return iso[:19].replace("T", " ") + "Z" if iso else ""


def report_summary(report: BackupPolicyOutput, policy_run: bool = True) -> str:
    """`2 completed, 1 failed; retention: deleted 3 snapshot sets (6 snapshots), ...`."""
    counts: dict[str, int] = {}
    for o in report.instances:
        counts[o.status] = counts.get(o.status, 0) + 1
    order = ["completed", "failed", "canceled", "running", "pending"]
    parts = [f"{counts.pop(k)} {k}" for k in order if k in counts]
    parts += [f"{n} {k}" for k, n in sorted(counts.items())]
    line = ", ".join(parts) or "no instances"
    r = report.retention
    if not policy_run:
        return line
    if r is None:
        return f"{line}; retention: not run" if report.phase == "done" else line
    from ec2backup.progress import human_bytes

    deleted = [
        f"{len(r.deleted_snapshot_sets)} snapshot sets ({len(r.deleted_snapshots)} snapshots)",
        f"{len(r.deleted_replica_sets)} replica sets ({len(r.deleted_replicas)} replicas)",
        f"{len(r.forgotten_restore_points)} restore points",
    ]
    verb = "would delete" if r.dry_run else "deleted"
    pruned = f", pruned {human_bytes(r.pruned_bytes)}" if r.pruned_bytes else ""
    return f"{line}; retention: {verb} {', '.join(deleted)}{pruned}"


def status_text(row: dict[str, Any]) -> str:
    """`succeeded`, `failed (2 of 5)`, `failed (terminated)`, `running (3 of 5 done)`, ..."""
    status = row["last_status"]
    if status is None:
        return "never run"
    n, ok, bad = row["instances"], row["completed_instances"], row["failed_instances"]
    if status == "running" and n is not None:
        return f"running ({ok + bad} of {n} done)"
    if status == "failed" and row["run_status"] == "FAILED" and n and bad == n:
        return f"failed ({n} of {n})"  # every instance failed: so did the run (BackupPolicy)
    if status == "failed" and row["run_status"] not in (None, "COMPLETED"):
        return f"failed ({str(row['run_status']).lower().replace('_', ' ')})"
    if status == "failed" and n is not None:
        return f"failed ({n - ok} of {n})"
    return str(status)

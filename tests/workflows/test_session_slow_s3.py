"""A backup session whose pack uploads S3 throttles (SlowDown, retried by botocore with backoff
for longer than the heartbeat timeout between two checkpoints) keeps its worker: the agent's
liveness beats say the host is alive while the upload waits (ec2backup.activity_support)."""

from __future__ import annotations

import time

from session_helpers import Workbench


def test_a_slow_s3_does_not_make_a_live_backup_worker_look_lost(wb: Workbench) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05", "--seed", "33")
    repo = wb.new_repo()
    wb.cli("lab", "fault", "--throttle", "1", "--api", "PutObject")
    try:
        t0 = time.monotonic()
        session = wb.backup(inst["instance_id"], "--repo", repo, check=False)
        refused = int(wb.metrics()["throttled_calls"].get("PutObject", 0))
    finally:
        wb.cli("lab", "fault", "--clear")
    print(f"session under 1 PutObject/s: {time.monotonic() - t0:.1f}s, {refused} refused")
    assert refused > 0
    assert session.returncode == 0 and session.result, wb.diagnose(session)
    assert session.result["status"] == "completed", session.result
    assert session.result["workers_provisioned"] == 1, session.result

"""How a session reads each volume (issue 18, ec2backup/readplan.py): `--read ebs-direct` reads
the snapshot with GetSnapshotBlock and gives the worker no volume copy; `--read auto` picks per
volume and says why (a small incremental goes direct); both restore byte for byte."""

from __future__ import annotations

from pathlib import Path

from session_helpers import Session, Workbench


def _copies(wb: Workbench, session: Session) -> list[str]:
    """The worker volumes the session created from its snapshots."""
    return [v["VolumeId"] for v in wb.session_volumes(session.session_id) if v.get("SnapshotId")]


def test_ebs_direct_and_auto_reads_restore_exactly(wb: Workbench, tmp_path: Path) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.1", "--seed", "81")
    instance_id, volume_id = inst["instance_id"], inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()
    metrics0 = wb.metrics()

    full = wb.backup(instance_id, "--repo", repo, "--read", "ebs-direct")
    counters = full.volume(volume_id)
    assert counters["read"] == "ebs-direct", counters
    assert counters["read_reason"].startswith("ebs-direct as asked"), counters
    assert counters["blocks_read"] > 0
    assert _copies(wb, full) == []  # no volume created, attached or hydrated
    gets = wb.metrics()["api_calls"].get("GetSnapshotBlock", 0) - metrics0["api_calls"].get(
        "GetSnapshotBlock", 0
    )
    assert gets >= counters["blocks_read"], (gets, counters)
    assert full.result is not None
    wb.assert_restores(
        repo, full.result["restore_point_id"], volume_id, wb.snapshot_of(full, volume_id),
        tmp_path / "full.img",
    )  # fmt: skip

    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "82")
    auto = wb.backup(instance_id, "--repo", repo, "--read", "auto")
    counters = auto.volume(volume_id)
    assert counters["cbt_used"] is True
    assert counters["read"] == "ebs-direct", counters
    assert "EBS direct ~" in counters["read_reason"] and "attached cop" in counters["read_reason"]
    assert auto.result is not None
    wb.assert_restores(
        repo, auto.result["restore_point_id"], volume_id, wb.snapshot_of(auto, volume_id),
        tmp_path / "auto.img",
    )  # fmt: skip

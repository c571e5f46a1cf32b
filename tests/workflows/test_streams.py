"""A volume read by several writers at once (issue 18): `backup --copies 2` gives the worker two
copies of each volume and reads each with its own stream (a span of whole block-map pages, its
own checkpoint), merged into one block map at commit. Full, incremental and a single-stream
incremental on top restore byte for byte; `repo check` finds nothing wrong."""

from __future__ import annotations

from pathlib import Path

from session_helpers import Workbench

GIB = 1024**3
# 512 MiB transfer ranges (the suite's are 256 MiB): every stream still runs several ranges,
# each going on from its own stream's checkpoint (stream 0: 8, stream 1: 2; the single stream:
# 10), in half the activities.
ORCHESTRATOR_ENV: dict[str, str | None] = {"EC2BACKUP_RANGE_BLOCKS": "1024"}


def test_two_streams_per_volume_restore_exactly(wb: Workbench, tmp_path: Path) -> None:
    # 5 GiB: three 2 GiB map pages, so two streams of two pages and one page.
    inst = wb.seed("--volumes", "1", "--size-gib", "5", "--fill", "0.04", "--seed", "71")
    instance_id, volume_id = inst["instance_id"], inst["volumes"][0]["volume_id"]
    repo = wb.new_repo()

    full = wb.backup(instance_id, "--repo", repo, "--copies", "2")
    copies = [v for v in wb.session_volumes(full.session_id) if v.get("SnapshotId")]
    by_source = {}
    for v in copies:
        by_source.setdefault(v["SnapshotId"], []).append(v["VolumeId"])
    assert all(len(ids) == 2 for ids in by_source.values()), by_source  # two copies each
    counters = full.volume(volume_id)
    assert counters["blocks_read"] > 0
    assert full.result is not None
    wb.assert_restores(
        repo, full.result["restore_point_id"], volume_id, wb.snapshot_of(full, volume_id),
        tmp_path / "full.img",
    )  # fmt: skip

    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "72")
    incremental = wb.backup(instance_id, "--repo", repo, "--copies", "2")
    assert incremental.volume(volume_id)["cbt_used"] is True
    assert incremental.result is not None
    wb.assert_restores(
        repo, incremental.result["restore_point_id"], volume_id,
        wb.snapshot_of(incremental, volume_id), tmp_path / "incr.img",
    )  # fmt: skip

    # One stream on top of a two-stream parent: the merged map is an ordinary parent.
    wb.cli("lab", "churn", volume_id, "--fraction", "0.03", "--seed", "73")
    single = wb.backup(instance_id, "--repo", repo)
    assert single.result is not None
    wb.assert_restores(
        repo, single.result["restore_point_id"], volume_id, wb.snapshot_of(single, volume_id),
        tmp_path / "single.img",
    )  # fmt: skip
    check = wb.cli("repo", "check", "--repo", repo)
    assert check.returncode == 0, check.stderr

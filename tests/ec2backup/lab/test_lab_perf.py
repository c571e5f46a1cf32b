"""Performance of the lab AWS endpoint on realistic sizes.

A seeded 8 GiB volume holding 2 GiB of data: the lab process's memory does not grow with the
data written (blocks live on disk), and CreateSnapshot until `completed` costs the lab process
well under a second of CPU (a snapshot is a copy of the volume's block map, not of its data).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab_helpers import (
    BLOCK,
    GIB,
    client,
    cpu_seconds,
    lab_aws_pid,
    list_blocks,
    rss_bytes,
    seed_volume,
    snapshot,
)

MIB = 1024**2


def disk_usage(path: Path) -> int:
    """Bytes allocated on disk under a directory."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_blocks * 512
    return total


def test_snapshot_of_8gib_volume_with_2gib_of_data_is_cheap(
    lab: Any, record_property: Callable[[str, object], None]
) -> None:
    pid = lab_aws_pid(lab)
    blocks_dir = Path(lab.dir) / "blocks"
    rss_before, disk_before = rss_bytes(pid), disk_usage(blocks_dir)
    volume_id = seed_volume(lab, size_gib=8, fill=0.25, seed_value=61)
    rss_growth = rss_bytes(pid) - rss_before
    disk_growth = disk_usage(blocks_dir) - disk_before

    ec2 = client(lab, "ec2")
    cpu_before = cpu_seconds(pid)
    snapshot_id = snapshot(ec2, volume_id)  # CreateSnapshot + waiting for `completed`
    cpu = cpu_seconds(pid) - cpu_before

    blocks, _ = list_blocks(client(lab, "ebs"), snapshot_id)
    data_bytes = len(blocks) * BLOCK
    print(
        f"\n8 GiB volume with {data_bytes / GIB:.2f} GiB of data: CreateSnapshot until completed "
        f"used {cpu:.3f} s of lab CPU; lab RSS grew by {rss_growth / MIB:.1f} MiB while "
        f"seeding, block store by {disk_growth / MIB:.0f} MiB on disk"
    )
    record_property("snapshot_cpu_seconds", round(cpu, 3))
    record_property("seed_rss_growth_mib", round(rss_growth / MIB, 1))
    record_property("seed_data_gib", round(data_bytes / GIB, 3))

    assert 1.9 * GIB <= data_bytes <= 2.1 * GIB
    assert cpu < 1.0, f"CreateSnapshot used {cpu:.3f} s of CPU"
    assert rss_growth < 300 * MIB, f"lab RSS grew by {rss_growth / MIB:.0f} MiB"
    assert disk_growth >= 0.9 * data_bytes, "the blocks should live on disk"

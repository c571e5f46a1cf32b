"""`make demo`: bring the lab up, seed an instance, and show a snapshot round trip through the
EBS direct APIs (full read, churn, changed-block read), each checked byte for byte."""

from __future__ import annotations

import hashlib
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from ec2backup import ebs as ebsapi
from ec2backup.lab import manager

console = Console()
DEMO_VOLUME_GIB = 2
DEMO_FILL = 0.25


def _lab_call(state: manager.LabState, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{state.aws_url}/_lab/{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def _read_snapshot(ebs: Any, snapshot_id: str, size_bytes: int, label: str) -> tuple[str, int]:
    """Rebuild the whole logical image from the EBS direct API; its sha256 and blocks read."""
    refs = {ref.index: ref for ref in ebsapi.list_snapshot_blocks(ebs, snapshot_id)}
    digest = hashlib.sha256()
    zero = bytes(ebsapi.EBS_BLOCK_SIZE)
    with Progress(
        TextColumn(label),
        BarColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=len(refs) * ebsapi.EBS_BLOCK_SIZE)
        for index in range(size_bytes // ebsapi.EBS_BLOCK_SIZE):
            ref = refs.get(index)
            if ref is None:
                digest.update(zero)
                continue
            digest.update(ebsapi.get_block(ebs, snapshot_id, ref))
            progress.advance(task, ebsapi.EBS_BLOCK_SIZE)
    return digest.hexdigest(), len(refs)


def main() -> None:
    started = time.monotonic()
    console.rule("[bold]ec2backup demo: the lab")
    state, fresh = manager.up(
        None, manager.DEFAULT_AWS_PORT, manager.DEFAULT_TEMPORAL_PORT, manager.DEFAULT_UI_PORT
    )
    console.print(f"lab {'started' if fresh else 'already running'} in {state.dir}")
    cfg = Config(retries={"mode": "standard"})
    kwargs: dict[str, Any] = {
        "endpoint_url": state.aws_url,
        "region_name": manager.LAB_REGION,
        "aws_access_key_id": manager.LAB_ACCESS_KEY,
        "aws_secret_access_key": manager.LAB_SECRET_KEY,
        "config": cfg,
    }
    ec2, ebs = boto3.client("ec2", **kwargs), boto3.client("ebs", **kwargs)

    with console.status(f"seeding one instance with a {DEMO_VOLUME_GIB} GiB data volume"):
        seeded = _lab_call(
            state,
            "POST",
            "seed",
            {
                "instances": 1,
                "volumes": 1,
                "size_gib": DEMO_VOLUME_GIB,
                "fill": DEMO_FILL,
                "tags": {"app": "demo"},
            },
        )
    instance = seeded["instances"][0]
    volume = instance["volumes"][0]
    console.print(
        f"instance {instance['instance_id']} with {volume['volume_id']} at {volume['device']}"
    )

    t0 = time.monotonic()
    snaps = ec2.create_snapshots(
        InstanceSpecification={"InstanceId": instance["instance_id"], "ExcludeBootVolume": True},
        CopyTagsFromSource="volume",
        Description="ec2backup demo",
    )["Snapshots"]
    first = snaps[0]["SnapshotId"]
    console.print(f"CreateSnapshots -> {first} ({snaps[0]['State']})")
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[first], WaiterConfig={"Delay": 1})
    snap_seconds = time.monotonic() - t0
    size = DEMO_VOLUME_GIB * 1024**3
    t0 = time.monotonic()
    full_sha, full_blocks = _read_snapshot(ebs, first, size, "full read  ")
    full_seconds = time.monotonic() - t0
    lab_sha = _lab_call(state, "GET", f"checksum/{first}")["sha256"]

    churned = _lab_call(
        state, "POST", "churn", {"volume_id": volume["volume_id"], "fraction": 0.01, "seed": 7}
    )
    second = ec2.create_snapshot(VolumeId=volume["volume_id"])["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[second], WaiterConfig={"Delay": 1})
    t0 = time.monotonic()
    changed = list(ebsapi.list_changed_blocks(ebs, first, second))
    changed_indexes = sorted(c.index if isinstance(c, ebsapi.BlockRef) else c for c in changed)
    for ref in changed:
        if isinstance(ref, ebsapi.BlockRef):
            ebsapi.get_block(ebs, second, ref)
    incr_seconds = time.monotonic() - t0

    table = Table(title="snapshot round trip through the EBS direct APIs")
    table.add_column("step")
    table.add_column("result")
    table.add_row("snapshot (pending -> completed)", f"{snap_seconds:.1f}s")
    table.add_row(
        "full read (ListSnapshotBlocks + GetSnapshotBlock)",
        f"{full_blocks} blocks in {full_seconds:.1f}s",
    )
    table.add_row("image sha256 == lab checksum", "yes" if full_sha == lab_sha else "NO")
    table.add_row("churned blocks", str(len(churned["blocks"])))
    table.add_row(
        "ListChangedBlocks == churned", "yes" if changed_indexes == churned["blocks"] else "NO"
    )
    table.add_row("incremental read", f"{len(changed)} blocks in {incr_seconds:.2f}s")
    console.print(table)
    console.print(
        f"Temporal Web UI: [link]{state.ui_url}[/link]   "
        f'(environment: eval "$(ec2backup lab env --dir {Path(state.dir)})"; '
        "stop with `ec2backup lab down`)"
    )
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")
    if full_sha != lab_sha or changed_indexes != churned["blocks"]:
        raise SystemExit("demo check failed")


if __name__ == "__main__":
    main()

"""Helpers for the lab integration tests: boto3 clients without retries, CLI wrappers, snapshots.

Every test drives the lab the way the product does: boto3 over HTTP, the `ec2backup lab` CLI,
and (for what the CLI prints) the `/_lab/` control API. The session-wide `lab` fixture is shared,
so helpers never assume an empty lab: they create resources and return their ids.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError
from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

from ec2backup.models.agent import DigestBlocksInput, DigestBlocksOutput

ACCOUNT_A = "123456789012"  # the lab's default account (credentials "testing")
ACCOUNT_B = "222222222222"  # reached through sts:AssumeRole
REGION = "us-east-1"
OTHER_REGION = "eu-west-1"
ZONE = "us-east-1a"
LAB_AMI = "ami-0ec2backup0lab001"
BLOCK = 512 * 1024
GIB = 1024**3
# The `lab` fixture starts the lab with --snapshot-pending-seconds 0.5.
SNAPSHOT_PENDING_SECONDS = 0.55

# `retries={"max_attempts": 1}` still allows one retry in botocore (it becomes
# total_max_attempts=2), which would hide injected faults: tests make exactly one attempt.
NO_RETRY = Config(retries={"total_max_attempts": 1, "mode": "standard"})


def client(
    lab: Any, service: str, region: str = REGION, creds: dict[str, str] | None = None
) -> Any:
    """A boto3 client against the lab that makes exactly one attempt per call."""
    creds = creds or {}
    return boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=lab.aws_url,
        region_name=region,
        aws_access_key_id=creds.get("aws_access_key_id", "testing"),
        aws_secret_access_key=creds.get("aws_secret_access_key", "testing"),
        aws_session_token=creds.get("aws_session_token"),
        config=NO_RETRY,
    )


def account_b_creds(lab: Any) -> dict[str, str]:
    """Credentials of a role in account B (assumed from account A)."""
    sts = client(lab, "sts")
    c = sts.assume_role(
        RoleArn=f"arn:aws:iam::{ACCOUNT_B}:role/ec2backup-test", RoleSessionName="lab-tests"
    )["Credentials"]
    return {
        "aws_access_key_id": c["AccessKeyId"],
        "aws_secret_access_key": c["SecretAccessKey"],
        "aws_session_token": c["SessionToken"],
    }


def error_of(exc: ClientError) -> tuple[str, int]:
    """(AWS error code, HTTP status) of a ClientError."""
    return exc.response["Error"]["Code"], exc.response["ResponseMetadata"]["HTTPStatusCode"]


# -- CLI ---------------------------------------------------------------------------------------
def cli_json(lab: Any, *args: str) -> Any:
    """Run `ec2backup ARGS` against the lab and parse its JSON output."""
    return json.loads(lab.cli(*args).stdout)


def seed(
    lab: Any,
    *,
    instances: int = 1,
    volumes: int = 1,
    size_gib: int = 1,
    fill: float = 0.03,
    seed_value: int = 1,
    extra: tuple[str, ...] = (),
) -> dict[str, Any]:
    """`lab seed`; returns its JSON."""
    return cli_json(  # type: ignore[no-any-return]
        lab,
        "lab",
        "seed",
        "--instances",
        str(instances),
        "--volumes",
        str(volumes),
        "--size-gib",
        str(size_gib),
        "--fill",
        str(fill),
        "--seed",
        str(seed_value),
        *extra,
    )


def seed_volume(lab: Any, **kwargs: Any) -> str:
    """Seed one instance with one data volume; return the volume id."""
    out = seed(lab, **kwargs)
    return str(out["instances"][0]["volumes"][0]["volume_id"])


def churn(lab: Any, volume_id: str, fraction: float, seed_value: int = 1) -> list[int]:
    """`lab churn`; returns the block indexes it wrote."""
    out = cli_json(
        lab, "lab", "churn", volume_id, "--fraction", str(fraction), "--seed", str(seed_value)
    )
    assert out["volume_id"] == volume_id
    assert out["bytes"] == len(out["blocks"]) * BLOCK
    return list(out["blocks"])


def checksum(lab: Any, resource_id: str) -> str:
    """`lab checksum ID`: sha256 hex of the whole logical content."""
    digest = lab.cli("lab", "checksum", resource_id).stdout.strip()
    assert len(digest) == 64, digest
    return str(digest)


def checksums(lab: Any, *resource_ids: str) -> list[str]:
    """`lab checksum` of several ids, concurrently (each hashes a whole GiB-sized volume)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda r: checksum(lab, r), resource_ids))


def metrics(lab: Any) -> dict[str, Any]:
    return cli_json(lab, "lab", "metrics")  # type: ignore[no-any-return]


def control_get(lab: Any, path: str) -> Any:
    """GET `/_lab/<path>` (JSON)."""
    with urllib.request.urlopen(f"{lab.aws_url}/_lab/{path}", timeout=60) as response:
        return json.load(response)


def control_post(lab: Any, path: str, body: dict[str, Any]) -> Any:
    """POST JSON to `/_lab/<path>`; the JSON answer."""
    req = urllib.request.Request(
        f"{lab.aws_url}/_lab/{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.load(r)


def one_line_error(stderr: str) -> str:
    """Assert the CLI reported exactly one line `error: ...` on stderr and return it."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# -- EC2 / EBS -------------------------------------------------------------------------------
def wait_completed(ec2: Any, *snapshot_ids: str) -> None:
    time.sleep(SNAPSHOT_PENDING_SECONDS)  # so that the waiter's first poll usually succeeds
    ec2.get_waiter("snapshot_completed").wait(
        SnapshotIds=list(snapshot_ids), WaiterConfig={"Delay": 1, "MaxAttempts": 60}
    )


def snapshot(ec2: Any, volume_id: str) -> str:
    """CreateSnapshot and wait until it is completed; returns the snapshot id."""
    snapshot_id = str(ec2.create_snapshot(VolumeId=volume_id)["SnapshotId"])
    wait_completed(ec2, snapshot_id)
    return snapshot_id


def restore(ec2: Any, snapshot_id: str, zone: str = ZONE) -> str:
    """CreateVolume from a snapshot; returns the volume id."""
    return str(ec2.create_volume(SnapshotId=snapshot_id, AvailabilityZone=zone)["VolumeId"])


def share(ec2: Any, snapshot_id: str, account: str) -> None:
    ec2.modify_snapshot_attribute(
        SnapshotId=snapshot_id,
        Attribute="createVolumePermission",
        CreateVolumePermission={"Add": [{"UserId": account}]},
    )


def list_blocks(ebs: Any, snapshot_id: str, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    """Every page of ListSnapshotBlocks: (blocks in page order, number of pages)."""
    blocks: list[dict[str, Any]] = []
    pages, token = 0, None
    while True:
        args = dict(kwargs, SnapshotId=snapshot_id)
        if token:
            args["NextToken"] = token
        page = ebs.list_snapshot_blocks(**args)
        assert page["BlockSize"] == BLOCK
        blocks += page["Blocks"]
        pages += 1
        token = page.get("NextToken")
        if not token:
            return blocks, pages


def changed_blocks(
    ebs: Any, first: str, second: str, **kwargs: Any
) -> tuple[list[dict[str, Any]], int]:
    """Every page of ListChangedBlocks: (changed blocks in page order, number of pages)."""
    blocks: list[dict[str, Any]] = []
    pages, token = 0, None
    while True:
        args = dict(kwargs, FirstSnapshotId=first, SecondSnapshotId=second)
        if token:
            args["NextToken"] = token
        page = ebs.list_changed_blocks(**args)
        assert page["BlockSize"] == BLOCK
        blocks += page["ChangedBlocks"]
        pages += 1
        token = page.get("NextToken")
        if not token:
            return blocks, pages


def get_block(ebs: Any, snapshot_id: str, index: int, token: str) -> bytes:
    """GetSnapshotBlock, checking length and the base64 SHA-256 checksum against the data."""
    out = ebs.get_snapshot_block(SnapshotId=snapshot_id, BlockIndex=index, BlockToken=token)
    data: bytes = out["BlockData"].read()
    assert out["DataLength"] == len(data) == BLOCK
    assert out["ChecksumAlgorithm"] == "SHA256"
    assert out["Checksum"] == base64.b64encode(hashlib.sha256(data).digest()).decode()
    return data


# -- processes -------------------------------------------------------------------------------
def lab_aws_pid(lab: Any) -> int:
    return int(json.loads((Path(lab.dir) / "lab.json").read_text())["aws_pid"])


def pid_alive(pid: int) -> bool:
    """True if the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


# ---- a test-side probe of an agent's device reads ----------------------------------------
AGENT_TIMEOUT = timedelta(seconds=60)


class DigestProbeInput(BaseModel):
    task_queue: str
    device: str
    block_indexes: list[int]
    volume_id: str | None = None


@workflow.defn(name="LabTestDigestProbe")
class DigestProbe:
    """Runs `agent_digest_blocks` once on a host's task queue."""

    @workflow.run
    async def run(self, req: DigestProbeInput) -> DigestBlocksOutput:
        return await workflow.execute_activity(
            "agent_digest_blocks",
            DigestBlocksInput(
                device=req.device, block_indexes=req.block_indexes, volume_id=req.volume_id
            ),
            task_queue=req.task_queue,
            result_type=DigestBlocksOutput,
            schedule_to_start_timeout=AGENT_TIMEOUT,
            start_to_close_timeout=AGENT_TIMEOUT,
            retry_policy=RetryPolicy(maximum_attempts=1),
        )

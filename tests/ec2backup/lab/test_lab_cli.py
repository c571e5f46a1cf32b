"""The lab's own commands (issue section 4), run through the real `ec2backup lab` CLI.

Covered: `lab seed` (JSON shape, running instances, volumes attached at the listed devices,
tags, encryption, realistic content: compressible and incompressible blocks), `lab churn`
(deterministic for a seed and a block map), `lab checksum` (volume == its snapshot, differs
after churn: test_lab_ebs::test_snapshot_is_point_in_time), `lab metrics`
(GetSnapshotBlock counted), `lab fault` (errors --times N, --throttle, --clear), `lab status`,
`lab env`, a second `lab up` on a running lab, and `lab up` on a busy port.
(`lab kill-instance` is in test_lab_agents; bad input and unknown ids in test_lab_errors.)
"""

from __future__ import annotations

import itertools
import json
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard
from botocore.exceptions import ClientError
from lab_helpers import (
    REGION,
    churn,
    cli_json,
    client,
    error_of,
    get_block,
    lab_aws_pid,
    list_blocks,
    metrics,
    one_line_error,
    seed,
    seed_volume,
    snapshot,
)

REPO_ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def no_faults(lab: Any) -> Iterator[None]:
    """Whatever a test injects is cleared afterwards (the lab is shared by the session)."""
    yield
    lab.cli("lab", "fault", "--clear")


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


# -- seed ---------------------------------------------------------------------------------------
def test_seed_creates_running_instances_with_attached_volumes(lab: Any) -> None:
    run = uuid.uuid4().hex[:12]
    out = seed(
        lab,
        instances=2,
        volumes=2,
        fill=0.01,
        seed_value=41,
        extra=("--tag", "team=lab-tests", "--tag", f"run={run}"),
    )
    assert set(out) == {"instances"} and len(out["instances"]) == 2
    ec2 = client(lab, "ec2")
    for n, inst in enumerate(out["instances"], start=1):
        assert set(inst) == {
            "instance_id",
            "region",
            "account",
            "architecture",
            "image_id",
            "volumes",
        }
        assert (inst["region"], inst["account"]) == (REGION, "123456789012")
        assert inst["architecture"] == "x86_64"
        assert [v["device"] for v in inst["volumes"]] == ["/dev/sdf", "/dev/sdg"]
        for v in inst["volumes"]:
            assert set(v) == {"volume_id", "device", "size_gib"} and v["size_gib"] == 1

        desc = ec2.describe_instances(InstanceIds=[inst["instance_id"]])
        instance = desc["Reservations"][0]["Instances"][0]
        assert instance["State"]["Name"] == "running"
        assert tags_of(instance) == {"team": "lab-tests", "run": run, "Name": f"lab-{n}"}
        mapped = {m["DeviceName"]: m["Ebs"]["VolumeId"] for m in instance["BlockDeviceMappings"]}

        volume_ids = [v["volume_id"] for v in inst["volumes"]]
        volumes = ec2.describe_volumes(VolumeIds=volume_ids)["Volumes"]
        for v in inst["volumes"]:
            assert mapped[v["device"]] == v["volume_id"]
            vol = next(x for x in volumes if x["VolumeId"] == v["volume_id"])
            assert (vol["State"], vol["Size"]) == ("in-use", 1)
            att = vol["Attachments"][0]
            assert (att["InstanceId"], att["Device"], att["State"]) == (
                inst["instance_id"],
                v["device"],
                "attached",
            )
            assert tags_of(vol) == {"team": "lab-tests", "run": run}

    found = ec2.describe_instances(Filters=[{"Name": "tag:run", "Values": [run]}])
    assert sum(len(r["Instances"]) for r in found["Reservations"]) == 2


def test_seed_encryption_options(lab: Any) -> None:
    ec2, kms = client(lab, "ec2"), client(lab, "kms")
    default_key = None
    for encryption in ("none", "default-key", "cmk"):
        volume_id = seed_volume(lab, fill=0.0, extra=("--encryption", encryption))
        vol = ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]
        assert vol["Encrypted"] is (encryption != "none")
        if encryption == "default-key":
            default_key = kms.describe_key(KeyId="alias/aws/ebs")["KeyMetadata"]["Arn"]
            assert vol["KmsKeyId"] == default_key
        if encryption == "cmk":
            meta = kms.describe_key(KeyId=vol["KmsKeyId"])["KeyMetadata"]
            assert meta["KeyManager"] == "CUSTOMER" and meta["Arn"] != default_key


def test_seeded_content_is_realistic(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.04, seed_value=42)
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    snapshot_id = snapshot(ec2, volume_id)
    blocks, _ = list_blocks(ebs, snapshot_id)
    compressor = zstandard.ZstdCompressor(level=3)
    ratios = []
    for b in blocks:
        data = get_block(ebs, snapshot_id, b["BlockIndex"], b["BlockToken"])
        ratios.append(len(data) / len(compressor.compress(data)))
    compressible = sum(1 for r in ratios if 2.0 <= r < 100)  # log-like text
    incompressible = sum(1 for r in ratios if r < 1.05)  # random data
    assert compressible >= 0.25 * len(ratios), sorted(ratios)
    assert incompressible >= 0.2 * len(ratios), sorted(ratios)
    # Written blocks are not one long run: a filesystem-like layout of several extents.
    indexes = [b["BlockIndex"] for b in blocks]
    runs = 1 + sum(1 for a, b in itertools.pairwise(indexes) if b != a + 1)
    assert runs >= 3


# -- churn ------------------------------------------------------------------------------------
def test_churn_is_deterministic_for_a_seed_and_block_map(lab: Any) -> None:
    # Two volumes seeded alike have the same block map; churn with one seed picks the same
    # blocks on both, another seed picks other blocks.
    vol_1 = seed_volume(lab, fill=0.03, seed_value=43)
    vol_2 = seed_volume(lab, fill=0.03, seed_value=43)
    first = churn(lab, vol_1, 0.02, seed_value=7)
    assert churn(lab, vol_2, 0.02, seed_value=7) == first
    assert len(first) == round(2048 * 0.02)
    other = churn(lab, vol_1, 0.02, seed_value=8)
    assert other != first
    assert len(other) == len(first)


def test_churn_zeros_writes_zero_blocks_that_count_as_written(lab: Any) -> None:
    """`lab churn --zeros`: a contiguous zeroed region in the middle of the data; the blocks
    are written (listed, changed), as an instance writing zeros makes them, and read as zeros."""
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    volume_id = seed_volume(lab, fill=0.3, seed_value=46)
    before = snapshot(ec2, volume_id)
    out = cli_json(lab, "lab", "churn", volume_id, "--fraction", "0.01", "--zeros")
    zeroed = out["blocks"]
    assert out["zeros"] and len(zeroed) == round(2048 * 0.01)
    assert zeroed == list(range(zeroed[0], zeroed[0] + len(zeroed)))  # one region
    after = snapshot(ec2, volume_id)
    listed = {b["BlockIndex"] for b in list_blocks(ebs, after)[0]}
    assert set(zeroed) <= listed
    changed = ebs.list_changed_blocks(FirstSnapshotId=before, SecondSnapshotId=after)
    unchanged = set(zeroed) - {c["BlockIndex"] for c in changed["ChangedBlocks"]}
    tokens = {b["BlockIndex"]: b["BlockToken"] for b in list_blocks(ebs, before)[0]}
    for index in unchanged:  # only blocks that held zeros already (the seed writes some)
        assert get_block(ebs, before, index, tokens[index]) == bytes(512 * 1024)
    assert len(unchanged) < len(zeroed) / 2
    token = next(
        b["BlockToken"] for b in list_blocks(ebs, after)[0] if b["BlockIndex"] == zeroed[0]
    )
    assert get_block(ebs, after, zeroed[0], token) == bytes(512 * 1024)


# -- metrics and faults -----------------------------------------------------------------------
def test_metrics_count_get_snapshot_block(lab: Any) -> None:
    volume_id = seed_volume(lab, fill=0.01, seed_value=45)
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    snapshot_id = snapshot(ec2, volume_id)
    blocks, _ = list_blocks(ebs, snapshot_id)
    before = metrics(lab)
    for b in blocks[:5]:
        get_block(ebs, snapshot_id, b["BlockIndex"], b["BlockToken"])
    after = metrics(lab)
    assert after["get_snapshot_block_calls"] - before["get_snapshot_block_calls"] == 5
    assert after["api_calls"]["GetSnapshotBlock"] - before["api_calls"]["GetSnapshotBlock"] == 5
    assert after["blocks_served"] - before["blocks_served"] == 5
    assert after["running_instances"] >= 1 and after["volumes"] >= 2
    for key in ("agent_bytes_read", "agent_bytes_read_total", "agents"):
        assert key in after


def test_fault_errors_then_success(lab: Any, no_faults: None) -> None:
    ec2 = client(lab, "ec2")
    volume_id = ec2.create_volume(Size=1, AvailabilityZone="us-east-1a")["VolumeId"]
    out = cli_json(
        lab, "lab", "fault", "--api", "DescribeVolumes", "--error", "InternalError", "--times", "2"
    )
    assert out == {"api": "DescribeVolumes", "error": "InternalError", "times": 2}
    for _ in range(2):
        with pytest.raises(ClientError) as exc:
            ec2.describe_volumes(VolumeIds=[volume_id])
        assert error_of(exc.value) == ("InternalError", 500)
    assert ec2.describe_volumes(VolumeIds=[volume_id])["Volumes"][0]["VolumeId"] == volume_id

    # EBS direct faults come back in the EBS protocol.
    ebs = client(lab, "ebs")
    lab.cli("lab", "fault", "--api", "ListSnapshotBlocks", "--error", "InternalServerException")
    with pytest.raises(ClientError) as exc:
        ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")
    assert error_of(exc.value) == ("InternalServerException", 500)
    with pytest.raises(ClientError) as exc:  # the fault was used up: the real answer again
        ebs.list_snapshot_blocks(SnapshotId="snap-0123456789abcdef0")
    assert error_of(exc.value) == ("ResourceNotFoundException", 404)


def test_fault_throttle_and_clear(lab: Any, no_faults: None) -> None:
    volume_id = seed_volume(lab, fill=0.01, seed_value=46)
    ec2, ebs = client(lab, "ec2"), client(lab, "ebs")
    snapshot_id = snapshot(ec2, volume_id)
    block = list_blocks(ebs, snapshot_id)[0][0]

    def get() -> None:
        get_block(ebs, snapshot_id, block["BlockIndex"], block["BlockToken"])

    lab.cli("lab", "fault", "--throttle", "2", "--api", "GetSnapshotBlock")
    outcomes = []
    started = time.monotonic()
    for _ in range(20):
        try:
            get()
            outcomes.append(True)
        except ClientError as exc:
            assert error_of(exc) == ("RequestThrottledException", 400)
            outcomes.append(False)
    elapsed = time.monotonic() - started
    # A token bucket of 2 calls/s: a burst of 2, then about 2 more per second.
    assert outcomes[0] and not all(outcomes)
    assert sum(outcomes) <= 2 + 2 * elapsed + 1
    list_blocks(ebs, snapshot_id)  # other APIs are not throttled

    # Without --api every AWS API is throttled, each with its service's code.
    lab.cli("lab", "fault", "--throttle", "1")
    for call, code, status in (
        (lambda: ec2.describe_volumes(VolumeIds=[volume_id]), "RequestLimitExceeded", 503),
        (lambda: list_blocks(ebs, snapshot_id), "RequestThrottledException", 400),
    ):
        errors = []
        for _ in range(5):
            try:
                call()
            except ClientError as exc:
                errors.append(error_of(exc))
        assert errors and set(errors) == {(code, status)}

    lab.cli(
        "lab", "fault", "--api", "DescribeSnapshots", "--error", "InternalError", "--times", "5"
    )
    assert cli_json(lab, "lab", "fault", "--clear") == {"cleared": True}
    for _ in range(10):
        get()
    ec2.describe_snapshots(SnapshotIds=[snapshot_id])


# -- lab up / status / env ----------------------------------------------------------------------
def test_lab_status(lab: Any, tmp_path: Path) -> None:
    text = lab.cli("lab", "status").stdout
    assert "lab running" in text and lab.aws_url in text and lab.temporal_address in text
    status = cli_json(lab, "lab", "status", "--json")
    assert status == {
        "running": True,
        "dir": str(Path(lab.dir).resolve()),
        "aws_url": lab.aws_url,
        "temporal_address": lab.temporal_address,
        "ui_url": lab.ui_url,
    }
    stopped = lab.cli("lab", "status", "--dir", str(tmp_path), check=False)
    assert stopped.returncode == 1 and "not running" in stopped.stdout
    stopped = lab.cli("lab", "status", "--json", "--dir", str(tmp_path), check=False)
    assert stopped.returncode == 1 and json.loads(stopped.stdout)["running"] is False


def test_lab_env_points_clients_at_the_lab(lab: Any) -> None:
    lines = lab.cli("lab", "env").stdout.strip().splitlines()
    assert lines and all(line.startswith("export ") for line in lines)
    env = dict(shlex.split(line[len("export ") :])[0].split("=", 1) for line in lines)
    assert env["AWS_ENDPOINT_URL"] == lab.aws_url
    assert env["TEMPORAL_ADDRESS"] == lab.temporal_address
    assert Path(env["EC2BACKUP_LAB_DIR"]).resolve() == Path(lab.dir).resolve()
    assert env["AWS_DEFAULT_REGION"] == REGION
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    # A shell that evals them reaches the lab with plain boto3 (no explicit endpoint).
    script = (
        f'eval "$({shlex.quote(sys.executable)} -m ec2backup.cli lab env)" && '
        f"{shlex.quote(sys.executable)} -c "
        "\"import boto3; print(boto3.client('sts').get_caller_identity()['Account'])\""
    )
    out = subprocess.run(
        ["bash", "-c", script],
        env={"PATH": "/usr/bin:/bin", "EC2BACKUP_LAB_DIR": str(lab.dir), "HOME": str(lab.dir)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "123456789012"


def test_second_lab_up_says_already_running(lab: Any) -> None:
    pid = lab_aws_pid(lab)
    out = lab.cli("lab", "up", "--detach")
    assert "already running" in out.stdout
    assert lab_aws_pid(lab) == pid


def test_lab_up_on_a_busy_port_fails_clearly(lab: Any, tmp_path: Path) -> None:
    aws_port = int(lab.aws_url.rsplit(":", 1)[1])
    args = ["--dir", str(tmp_path)]
    try:
        out = lab.cli(
            "lab",
            "up",
            "--detach",
            *args,
            "--aws-port",
            str(aws_port),
            "--temporal-port",
            str(free_port()),
            "--ui-port",
            str(free_port()),
            check=False,
            timeout=120,
        )
        assert out.returncode != 0
        message = one_line_error(out.stderr)
        assert str(aws_port) in message and "--aws-port" in message
        assert not (tmp_path / "lab.json").exists()
        assert lab.cli("lab", "status", *args, check=False).returncode == 1
    finally:
        lab.cli("lab", "down", *args, check=False)

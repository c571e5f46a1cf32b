"""Unit tests of the lab's pure pieces: extents, block maps, content, request parsing, user-data."""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
import zstandard

from ec2backup.userdata import parse_agent_command, render_agent_user_data
from ec2backup_lab.blockstore import (
    EBS_BLOCK_SIZE,
    ZERO_BLOCK,
    BlockStore,
    VolumeData,
    allocated_blocks,
)
from ec2backup_lab.content import ContentGenerator, layout
from ec2backup_lab.requests import classify


def test_allocated_blocks_follow_extents(tmp_path: Path) -> None:
    path = tmp_path / "img"
    with open(path, "wb") as f:
        f.truncate(64 * EBS_BLOCK_SIZE)
        os.pwrite(f.fileno(), b"x" * 10, 3 * EBS_BLOCK_SIZE + 100)  # inside block 3
        os.pwrite(f.fileno(), b"y" * (EBS_BLOCK_SIZE + 1), 10 * EBS_BLOCK_SIZE)  # 10 and 11
        os.pwrite(f.fileno(), b"z", 64 * EBS_BLOCK_SIZE - 1)  # last byte
    with open(path, "rb") as f:
        assert allocated_blocks(f.fileno(), 64 * EBS_BLOCK_SIZE) == [3, 10, 11, 63]


def test_volume_snapshot_map_tracks_lab_and_foreign_writes(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    vol = VolumeData(store, tmp_path / "v.img", 1)
    vol.write_blocks({5: b"a" * EBS_BLOCK_SIZE, 7: ZERO_BLOCK})
    first = vol.snapshot_map()
    assert sorted(first) == [5, 7]
    # A foreign writer (an agent restoring into the device) is noticed and rescanned.
    with open(vol.path, "r+b") as f:
        os.pwrite(f.fileno(), b"b" * EBS_BLOCK_SIZE, 9 * EBS_BLOCK_SIZE)
    second = vol.snapshot_map()
    assert sorted(second) == [5, 7, 9]
    assert store.read(second[9]) == b"b" * EBS_BLOCK_SIZE
    assert first[5] == second[5]
    # The earlier map is a point in time: later writes never change it.
    vol.write_blocks({5: b"c" * EBS_BLOCK_SIZE})
    assert store.read(first[5]) == b"a" * EBS_BLOCK_SIZE


def test_materialize_writes_the_snapshot_bytes(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    src = VolumeData(store, tmp_path / "src.img", 1)
    src.write_blocks({0: os.urandom(EBS_BLOCK_SIZE), 2047: b"q" * EBS_BLOCK_SIZE})
    dst = VolumeData(store, tmp_path / "dst.img", 1)
    dst.materialize(src.snapshot_map())
    with open(src.path, "rb") as a, open(dst.path, "rb") as b:
        assert allocated_blocks(b.fileno(), dst.size_bytes) == [0, 2047]
        for index in (0, 2047):
            offset = index * EBS_BLOCK_SIZE
            assert os.pread(a.fileno(), EBS_BLOCK_SIZE, offset) == os.pread(
                b.fileno(), EBS_BLOCK_SIZE, offset
            )
    assert dst.path.stat().st_size == src.path.stat().st_size


def test_content_is_realistic_and_deterministic() -> None:
    gen = ContentGenerator(3)
    text = gen.text_block("k1")
    rnd = gen.random_block("k2")
    assert len(text) == len(rnd) == EBS_BLOCK_SIZE
    assert text == ContentGenerator(3).text_block("k1")
    assert text != gen.text_block("k3")
    cctx = zstandard.ZstdCompressor(level=3)
    assert len(cctx.compress(text)) < EBS_BLOCK_SIZE / 2.5  # log-like text compresses
    assert len(cctx.compress(rnd)) > EBS_BLOCK_SIZE * 0.99  # random data does not


@pytest.mark.parametrize("fill", [0.0, 0.01, 0.25, 1.0])
def test_layout_covers_about_the_fill(fill: float) -> None:
    total = 4096
    extents = layout(random.Random(1), total, fill)
    covered = [i for start, length in extents for i in range(start, start + length)]
    assert len(covered) == len(set(covered)), "extents overlap"
    assert all(0 <= i < total for i in covered)
    assert abs(len(covered) - total * fill) <= 1


def _environ(method: str, path: str, query: str = "", service: str = "ec2") -> dict[str, object]:
    return {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_AUTHORIZATION": "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261125/eu-west-1/"
        f"{service}/aws4_request, SignedHeaders=host, Signature=x",
        "wsgi.input": io.BytesIO(),
    }


def test_classify_names_the_api() -> None:
    ec2 = classify(_environ("POST", "/"), b"Action=DescribeVolumes&Version=2016-11-15")
    assert ec2 is not None and (ec2.service, ec2.region, ec2.action) == (
        "ec2",
        "eu-west-1",
        "DescribeVolumes",
    )
    ebs = classify(_environ("GET", "/snapshots/snap-1/blocks/7", "blockToken=t", "ebs"), b"")
    assert ebs is not None and ebs.action == "GetSnapshotBlock"
    assert ebs.route == {"snap": "snap-1", "idx": "7"} and ebs.param("blockToken") == "t"
    changed = classify(_environ("GET", "/snapshots/snap-2/changedblocks", "", "ebs"), b"")
    assert changed is not None and changed.action == "ListChangedBlocks"
    put = classify(_environ("PUT", "/bucket/key", "partNumber=1&uploadId=u", "s3"), b"")
    assert put is not None and put.action == "UploadPart"
    assert classify({"PATH_INFO": "/", "REQUEST_METHOD": "GET"}, b"") is None


def test_agent_user_data_round_trip() -> None:
    text = render_agent_user_data("10.0.0.5:7233", namespace="prod")
    argv = parse_agent_command(text)
    assert argv == [
        "agent",
        "--task-queue",
        "ec2backup-host-{instance_id}",
        "--temporal-address",
        "10.0.0.5:7233",
        "--namespace",
        "prod",
    ]
    assert "password" not in text.lower() and "secret" not in text.lower()
    assert parse_agent_command("#!/bin/bash\necho hello\n") is None

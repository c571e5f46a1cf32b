"""Image backups read, image restores and a local repository's large objects write, around the
page cache (O_DIRECT) where the file system allows: the same bytes as buffered I/O, short last
blocks and unaligned tails included, and the buffered path where O_DIRECT does not exist."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from repo_helpers import open_repo
from repo_imagegen import BS, sha256_file

from ec2backup.repository.backend import DIRECT_STAGE, DIRECT_WRITE_MIN, LocalBackend
from ec2backup.repository.directio import BlockWriter
from ec2backup.repository.image import (
    allocated_blocks,
    backup_image,
    image_size,
    read_blocks,
    read_blocks_direct,
    restore_image,
)


def _image(path: Path, size: int, seed: int) -> str:
    rng = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for i in range(0, -(-size // BS), 2):  # every other block written: holes between
            f.seek(i * BS)
            f.write(rng.randbytes(min(BS, size - i * BS)))
    return sha256_file(path)


@pytest.mark.parametrize("size", [9 * BS, 6 * BS + 12345, 4096 * 3, 1000])
def test_direct_reads_give_the_buffered_bytes(tmp_path: Path, size: int) -> None:
    img = tmp_path / "disk.img"
    _image(img, size, seed=size)
    fd = os.open(img, os.O_RDONLY)
    try:
        n = image_size(fd)
        blocks = list(allocated_blocks(fd, n))
        direct = read_blocks_direct(img, fd, n, blocks)
        assert direct is not None  # ext4/xfs/tmpfs here all take O_DIRECT
        got = [(b, bytes(data)) for b, data in direct]
        assert got == list(read_blocks(fd, n, blocks))
        assert [b for b, _ in got] == blocks and len(got[-1][1]) == min(BS, n - blocks[-1] * BS)
    finally:
        os.close(fd)


def test_block_writer_writes_aligned_blocks_direct_and_the_rest_buffered(tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    out.write_bytes(bytes(3 * BS))
    block = random.Random(1).randbytes(BS)
    fd = os.open(out, os.O_WRONLY)
    writer = BlockWriter(out, fd)
    try:
        writer.write(BS, memoryview(block))  # direct
        writer.write(0, block[:1000])  # short: buffered
        writer.write(2 * BS + 100, block[:4096])  # not on an aligned offset: buffered
        assert writer.direct_writes == 1
    finally:
        writer.close()
        os.fsync(fd)
        os.close(fd)
    want = block[:1000] + bytes(BS - 1000) + block + bytes(100) + block[:4096]
    assert out.read_bytes() == want + bytes(3 * BS - len(want))


@pytest.mark.parametrize("backend_kind", ["local"])
def test_round_trip_direct_and_without_o_direct(
    init_repo: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Byte-exact either way; without O_DIRECT (a platform that has none) reads and writes
    go through the page cache as before."""
    repo = open_repo(init_repo)
    img = tmp_path / "disk.img"
    digest = _image(img, 7 * BS + 4096 + 777, seed=5)
    res = backup_image(repo, img)
    restore_image(repo, res.volume, tmp_path / "direct.out")
    assert sha256_file(tmp_path / "direct.out") == digest
    monkeypatch.delattr(os, "O_DIRECT")
    fd = os.open(img, os.O_RDONLY)
    try:
        assert read_blocks_direct(img, fd, image_size(fd), [0]) is None
    finally:
        os.close(fd)
    fd = os.open(tmp_path / "direct.out", os.O_WRONLY)
    writer = BlockWriter(tmp_path / "direct.out", fd)
    writer.write(0, bytes(BS))
    assert writer.direct_writes == 0  # buffered
    writer.close()
    os.close(fd)
    res2 = backup_image(repo, img)
    assert res2.volume.pages == res.volume.pages  # the same blocks, deduplicated
    restore_image(repo, res2.volume, tmp_path / "buffered.out")
    assert sha256_file(tmp_path / "buffered.out") == digest


@pytest.mark.parametrize(
    "sizes",
    [
        [1000],  # small: buffered
        [DIRECT_WRITE_MIN],  # aligned, one stage
        [300_001, 700_000, 2 * DIRECT_STAGE + 4095],  # chunks across stages, unaligned tail
        [4096] * 300,  # many small chunks
    ],
)
def test_local_objects_write_the_same_bytes_direct_or_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int]
) -> None:
    rng = random.Random(sum(sizes))
    chunks = [rng.randbytes(n) for n in sizes]
    want = b"".join(chunks)
    backend = LocalBackend(tmp_path / "repo")
    assert backend.create("data/ab/direct", chunks)
    assert backend.get("data/ab/direct") == want
    assert not backend.create("data/ab/direct", chunks)  # create-if-absent still holds
    monkeypatch.delattr(os, "O_DIRECT")
    assert backend.create("data/ab/buffered", chunks)
    assert backend.get("data/ab/buffered") == want

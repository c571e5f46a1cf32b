"""Corruption is detected and named, never restored silently (local and S3)."""

from __future__ import annotations

from pathlib import Path

import pytest
from repo_helpers import open_repo, run_inproc
from repo_imagegen import make_image

from ec2backup.repository.backend import open_backend
from ec2backup.repository.image import backup_image


def _flip(url: str, name: str, offset: int) -> None:
    backend = open_backend(url)
    data = bytearray(backend.get(name))
    data[offset % len(data)] ^= 0x01
    backend.put(name, bytes(data))


def _victim(url: str, kind: str) -> tuple[str, int]:
    """(object name, byte offset) to corrupt for each kind of object."""
    repo = open_repo(url)
    if kind == "pack":
        pack_id, ipack = next(iter(repo.load_index().packs.items()))
        name = f"data/{pack_id[:2]}/{pack_id}"
        return name, ipack.blobs[0].offset + 40  # inside the first blob's ciphertext
    prefix = {"index": "index/", "map": "maps/", "restorepoint": "restorepoints/"}[kind]
    name = next(n for n, _ in repo.backend.list(prefix))
    return name, 30


@pytest.mark.parametrize("kind", ["pack", "index", "map", "restorepoint"])
def test_flipped_byte_is_detected(init_repo: str, tmp_path: Path, kind: str) -> None:
    img = tmp_path / "img"
    make_image(img, 6, seed=2, zero=0.0)
    res = backup_image(open_repo(init_repo), img)
    rp = res.restore_point
    out = tmp_path / "out"
    name, offset = _victim(init_repo, kind)
    _flip(init_repo, name, offset)

    chk = run_inproc("repo", "check", "--read-data", "--repo", init_repo)
    assert chk.code != 0
    assert name in chk.err, chk.err  # the broken object is named

    rst = run_inproc("image", "restore", rp, "--repo", init_repo, "--output", out)
    assert rst.code != 0
    assert rst.err.startswith("error: ") and rst.err.count("\n") == 1, rst.err
    if kind != "restorepoint":  # a corrupt restore point is named by id in its own message
        assert name.rsplit("/", 1)[1][:12] in rst.err or name in rst.err, rst.err
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp leftovers


def test_check_structure_without_read_data(init_repo: str, tmp_path: Path) -> None:
    """Plain `check` verifies metadata; a missing pack is named without reading data."""
    img = tmp_path / "img"
    make_image(img, 4, seed=8, zero=0.0)
    backup_image(open_repo(init_repo), img)
    assert run_inproc("repo", "check", "--repo", init_repo).code == 0
    assert run_inproc("repo", "check", "--read-data-subset", "50%", "--repo", init_repo).code == 0
    repo = open_repo(init_repo)
    pack_id = next(iter(repo.load_index().packs))
    repo.backend.delete(f"data/{pack_id[:2]}/{pack_id}")
    chk = run_inproc("repo", "check", "--repo", init_repo)
    assert chk.code != 0 and pack_id in chk.err

"""Byte-exact round trips: fixed image shapes on both backends, incrementals 5 deep, property
tests (hypothesis) on the local backend, and the BackupWriter checkpoint/resume API."""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from repo_helpers import PASSWORD, TEST_PACK_MIB, open_repo, run_inproc, run_sub
from repo_imagegen import BS, make_image, mutate, sha256_file, text_block

from ec2backup.repository.image import backup_image, restore_image
from ec2backup.repository.repo import Repository
from ec2backup.repository.writer import BackupWriter, commit_restore_point


def _write(path: Path, size: int, blocks: dict[int, bytes]) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
        for i, data in blocks.items():
            f.seek(i * BS)
            f.write(data[: max(0, size - i * BS)])
    return sha256_file(path)


def _shapes(tmp: Path) -> dict[str, tuple[Path, str]]:
    rng = random.Random(7)
    out = {}
    p = tmp / "sparse.img"
    out["sparse"] = (p, _write(p, 16 * BS, {1: rng.randbytes(BS), 9: text_block(rng)}))
    p = tmp / "zero.img"
    out["all-zero"] = (p, _write(p, 6 * BS, {}))
    p = tmp / "dense-zero.img"  # zeros written explicitly (allocated, not holes)
    out["dense-zero"] = (p, _write(p, 3 * BS, {0: bytes(BS), 1: bytes(BS), 2: bytes(BS)}))
    p = tmp / "random.img"
    out["random"] = (p, _write(p, 5 * BS, {i: rng.randbytes(BS) for i in range(5)}))
    p = tmp / "text.img"
    out["compressible"] = (p, _write(p, 5 * BS, {i: text_block(rng) for i in range(5)}))
    p = tmp / "odd.img"  # not a multiple of 512 KiB, data in the short last block
    out["odd-size"] = (p, _write(p, 4 * BS + 12345, {0: rng.randbytes(BS), 4: rng.randbytes(BS)}))
    p = tmp / "tiny.img"
    out["tiny"] = (p, _write(p, 1000, {0: rng.randbytes(1000)}))
    p = tmp / "empty.img"
    out["empty"] = (p, _write(p, 0, {}))
    p = tmp / "mixed.img"
    out["mixed"] = (p, make_image(p, 24, seed=3, tail=777))
    return out


def test_fixed_shapes_roundtrip(init_repo: str, tmp_path: Path) -> None:
    """Every shape restores byte-exact (sha256) and sparse; on local and S3."""
    repo = open_repo(init_repo)
    for name, (path, digest) in _shapes(tmp_path).items():
        res = backup_image(repo, path)
        out = tmp_path / f"{name}.out"
        restore_image(repo, res.volume, out)
        assert sha256_file(out) == digest, name
        assert out.stat().st_size == path.stat().st_size, name
        if name in ("all-zero", "empty"):  # holes only: no page, nothing stored
            assert res.volume.stats.blocks_allocated == 0
            assert res.volume.pages == [None] * len(res.volume.pages)
            assert out.stat().st_blocks == 0  # restored as holes
        if name == "dense-zero":  # written zero blocks: recorded as written, no blob stored
            assert res.volume.stats.blocks_allocated == 3
            assert res.volume.stats.blocks_new == 0 and res.volume.stats.bytes_new_stored == 0
            assert out.stat().st_blocks == 0  # a file restore still leaves them sparse
    repo2 = open_repo(init_repo)
    from ec2backup.repository.check import check

    rep = check(repo2, read_data=True)
    assert rep.ok, rep.errors


def test_cli_roundtrip_and_ls_stats(init_repo: str, tmp_path: Path) -> None:
    """The CLI path end to end (subprocess): backup prints the id, restore, ls --json, stats."""
    img = tmp_path / "img"
    digest = make_image(img, 12, seed=11, tail=4096)
    res = run_sub(
        "image", "backup", img, "--repo", init_repo, env={**os.environ, "EC2BACKUP_PROGRESS": "1"}
    )
    assert res.code == 0, res.err
    rp = res.last_line
    assert len(rp) == 64
    assert "eta" in res.err and "MiB" in res.err  # the progress bar (forced on: no terminal)
    assert "restore point" in res.err and "MB/s" in res.err  # the final summary
    out = tmp_path / "out"
    res = run_sub("image", "restore", rp[:10], "--repo", init_repo, "--output", out)
    assert res.code == 0, res.err
    assert sha256_file(out) == digest
    ls = run_inproc("repo", "ls", "--repo", init_repo, "--json")
    assert ls.code == 0
    import json

    entries = json.loads(ls.out)
    assert [e["id"] for e in entries] == [rp]
    assert entries[0]["volumes"][0]["size"] == img.stat().st_size
    stats = run_inproc("repo", "stats", "--repo", init_repo, "--json")
    data = json.loads(stats.out)
    assert data["restore_points"] == 1 and data["stored_bytes"] > 0
    assert data["dedup_ratio"] > 1.0  # compressible text + holes
    # --volume by index and by name work; an unknown one is a one-line error
    assert (
        run_inproc("image", "restore", rp, "--repo", init_repo, "-o", out, "--volume", "0").code
        == 0
    )
    bad = run_inproc("image", "restore", rp, "--repo", init_repo, "-o", out, "--volume", "7")
    assert bad.code != 0 and bad.err.startswith("error: ")
    missing = run_inproc("image", "restore", "deadbeef", "--repo", init_repo, "-o", out)
    assert missing.code == 3 and "not found" in missing.err


def test_incremental_chain_5_deep(init_repo: str, tmp_path: Path) -> None:
    """Full + 5 incrementals from changed-block lists: each restores exactly, each writes only
    the changed blocks and pages, and restoring an older one still works."""
    repo = open_repo(init_repo)
    img = tmp_path / "img"
    n_blocks = 20 * 4096 // 4096 * 3  # 60 blocks
    digests = [make_image(img, n_blocks, seed=5, tail=100)]
    res = backup_image(repo, img)
    ids = [res.restore_point]
    for depth in range(1, 6):
        changed = mutate(img, 4, seed=depth)
        digests.append(sha256_file(img))
        res = backup_image(repo, img, parent=ids[-1], changed_blocks=changed)
        assert res.volume.stats.blocks_read == len(changed)
        assert res.volume.stats.blocks_new <= len(changed)
        assert res.volume.stats.pages_written <= 1
        ids.append(res.restore_point)
    for i, (rp_id, digest) in enumerate(zip(ids, digests, strict=True)):
        _, rp = repo.load_restore_point(rp_id)
        if i:
            assert rp.parent == ids[i - 1]
        out = tmp_path / f"out{i}"
        restore_image(repo, rp.volumes[0], out)
        assert sha256_file(out) == digest, f"depth {i}"


def test_incremental_without_list_and_resize(init_repo: str, tmp_path: Path) -> None:
    """--parent without a list reads everything (dedups, reuses unchanged pages); images that
    grow or shrink between backups restore to the new size."""
    repo = open_repo(init_repo)
    img = tmp_path / "img"
    make_image(img, 8, seed=1)
    base = backup_image(repo, img)
    again = backup_image(repo, img, parent=base.restore_point)
    assert again.volume.stats.blocks_new == 0
    assert again.volume.stats.pages_written == 0
    assert again.volume.pages == base.volume.pages
    rng = random.Random(3)
    with open(img, "r+b") as f:  # grow by 2.5 blocks, data in the new tail
        f.seek(10 * BS)
        f.write(rng.randbytes(BS // 2))
    grown = backup_image(repo, img, parent=again.restore_point, changed_blocks=[])
    out = tmp_path / "out"
    restore_image(repo, grown.volume, out)
    assert sha256_file(out) == sha256_file(img)
    os.truncate(img, 3 * BS + 5)  # shrink mid-block
    shrunk = backup_image(repo, img, parent=grown.restore_point, changed_blocks=[3])
    restore_image(repo, shrunk.volume, out)
    assert sha256_file(out) == sha256_file(img)
    assert shrunk.volume.stats.blocks_allocated <= 4


def test_dedup_across_volumes(init_repo: str, tmp_path: Path) -> None:
    """Identical blocks in another image (another 'volume') are not stored again."""
    repo = open_repo(init_repo)
    a, b = tmp_path / "a", tmp_path / "b"
    make_image(a, 10, seed=9, zero=0.0)
    with open(a, "rb") as src, open(b, "wb") as dst:  # b = a shifted by 3 blocks
        dst.truncate(13 * BS)
        dst.seek(3 * BS)
        dst.write(src.read())
    first = backup_image(repo, a)
    second = backup_image(repo, b)
    assert first.volume.stats.blocks_new == 10
    assert second.volume.stats.blocks_new == 0
    out = tmp_path / "out"
    restore_image(repo, second.volume, out)
    assert sha256_file(out) == sha256_file(b)


def test_writer_checkpoint_resume(tmp_path: Path) -> None:
    """The library API the agent uses: feed blocks, checkpoint, 'crash', resume, finish."""
    url = str(tmp_path / "repo")
    repo = Repository.create(url, PASSWORD.encode(), pack_size=TEST_PACK_MIB << 20)
    rng = random.Random(4)
    size = 9 * BS + 10
    blocks = {i: (rng.randbytes(BS) if i % 2 else text_block(rng)) for i in (0, 2, 3, 5, 8, 9)}
    blocks[9] = blocks[9][:10]
    expect = tmp_path / "expect"
    digest = _write(expect, size, blocks)
    w = BackupWriter(repo, name="vol-0123", size=size, checkpoint_key="session-1/vol-0123")
    w.add(0, blocks[0])
    w.add(1, None)  # listed, not written in the source: a hole
    for i in (2, 3):
        w.add(i, blocks[i])
    time.sleep(0.2)  # the first attempt's time counts in the restore point too
    assert w.checkpoint() == 4
    w.add(5, blocks[5])  # fed but not checkpointed: lost in the "crash"
    w.close()
    repo = Repository.open(url, PASSWORD.encode())
    w = BackupWriter.resume(repo, "session-1/vol-0123")
    assert w.position == 4
    for i in (5, 8, 9):
        w.add(i, blocks[i])
    vol = w.finish()
    # Counted once each through the resume: what the lost attempt made durable included.
    assert (vol.stats.blocks_listed, vol.stats.blocks_read) == (7, 6), vol.stats
    assert vol.stats.seconds >= 0.2, vol.stats
    rp = commit_restore_point(repo, [vol], checkpoint_keys=["session-1/vol-0123"])
    assert not list(repo.backend.list("checkpoints/"))
    _, loaded = repo.load_restore_point(rp)
    out = tmp_path / "out"
    restore_image(repo, loaded.volume("vol-0123"), out)
    assert sha256_file(out) == digest
    with pytest.raises(ValueError):
        BackupWriter(repo, name="v", size=BS * 2).add(5, b"x")


block_kinds = st.sampled_from(["hole", "zero", "text", "random", "dup"])


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(block_kinds, min_size=0, max_size=12),
    tail=st.integers(min_value=0, max_value=BS - 1),
    seed=st.integers(min_value=0, max_value=2**16),
    changes=st.lists(st.tuples(st.integers(0, 15), block_kinds), max_size=6),
)
def test_property_roundtrip(
    tmp_path_factory: pytest.TempPathFactory,
    kinds: list[str],
    tail: int,
    seed: int,
    changes: list[tuple[int, str]],
) -> None:
    """Any layout of holes/zeros/text/random/duplicate blocks and any tail length restores
    exactly, full and incremental (changed-block list) on top."""
    tmp = tmp_path_factory.mktemp("prop")
    rng = random.Random(seed)
    repo = Repository.create(str(tmp / "repo"), PASSWORD.encode(), pack_size=TEST_PACK_MIB << 20)
    size = len(kinds) * BS + (tail if kinds else min(tail, 4096))
    pool = [rng.randbytes(BS)]

    def block(kind: str) -> bytes | None:
        if kind == "hole":
            return None
        if kind == "zero":
            return bytes(BS)
        if kind == "text":
            return text_block(rng)
        if kind == "dup":
            return pool[0]
        return rng.randbytes(BS)

    contents = {i: b for i, k in enumerate(kinds) if (b := block(k)) is not None}
    if tail and kinds:
        contents[len(kinds)] = rng.randbytes(BS)
    img = tmp / "img"
    digest = _write(img, size, contents)
    full = backup_image(repo, img)
    out = tmp / "out"
    restore_image(repo, full.volume, out)
    assert sha256_file(out) == digest
    n_blocks = -(-size // BS)
    changed = sorted({i for i, _ in changes if i < n_blocks})
    if not changed:
        return
    with open(img, "r+b") as f:
        for i, kind in changes:
            if i >= n_blocks:
                continue
            data = block(kind) or bytes(BS)
            f.seek(i * BS)
            f.write(data[: size - i * BS])
    incr = backup_image(repo, img, parent=full.restore_point, changed_blocks=changed)
    restore_image(repo, incr.volume, out)
    assert sha256_file(out) == sha256_file(img)


def test_writer_rejects_out_of_order(tmp_path: Path) -> None:
    repo = Repository.create(str(tmp_path / "r"), PASSWORD.encode())
    w = BackupWriter(repo, name="v", size=4 * BS)
    w.add(2, bytes(BS))
    with pytest.raises(ValueError):
        w.add(1, bytes(BS))
    with pytest.raises(ValueError):
        w.add(4, bytes(BS))
    w.close()


def test_parallel_parts_of_one_volume(tmp_path: Path) -> None:
    """Two writers cover page-aligned halves of one (sparse, > 2 GiB) volume; merged and
    restored, every block is where it belongs."""
    from ec2backup.repository.blockmap import PAGE_BLOCKS
    from ec2backup.repository.writer import merge_volume_parts

    repo = Repository.create(str(tmp_path / "r"), PASSWORD.encode(), pack_size=TEST_PACK_MIB << 20)
    size = (PAGE_BLOCKS + 3) * BS
    rng = random.Random(12)
    data = {0: rng.randbytes(BS), 10: text_block(rng), PAGE_BLOCKS + 1: rng.randbytes(BS)}
    parts = []
    for blocks in (range(0, PAGE_BLOCKS), range(PAGE_BLOCKS, PAGE_BLOCKS + 3)):
        w = BackupWriter(repo, name="vol-big", size=size)
        for i in sorted(data):
            if i in blocks:
                w.add(i, data[i])
        parts.append((blocks, w.finish()))
    vol = merge_volume_parts(repo, parts)
    assert vol.stats.blocks_allocated == 3
    rp = commit_restore_point(repo, [vol])
    out = tmp_path / "out"
    restore_image(repo, repo.load_restore_point(rp)[1].volumes[0], out)
    assert out.stat().st_size == size
    with open(out, "rb") as f:
        for i, block in data.items():
            f.seek(i * BS)
            assert f.read(BS) == block
        f.seek(5 * BS)
        assert f.read(BS) == bytes(BS)
    with pytest.raises(ValueError):
        merge_volume_parts(repo, [(range(1, 5), vol)])


def test_backup_input_errors(init_repo: str, tmp_path: Path) -> None:
    """Bad inputs are one-line errors with a non-zero exit, never tracebacks."""
    img = tmp_path / "img"
    img.write_bytes(b"a" * 100)
    changed = tmp_path / "changed.json"
    changed.write_text('{"not": "a list"}')
    cases = [
        (["image", "backup", tmp_path / "missing", "--repo", init_repo], "cannot open"),
        (["image", "backup", tmp_path, "--repo", init_repo], "not a regular file"),
        (
            [
                "image",
                "backup",
                img,
                "--repo",
                init_repo,
                "--changed-blocks",
                changed,
                "--parent",
                "abcd",
            ],
            "JSON array",
        ),
        (["image", "backup", img, "--repo", init_repo, "--parent", "abcd"], "not found"),
        (["image", "backup", img, "--repo", str(tmp_path / "nope")], "no repository"),
    ]
    for args, message in cases:
        res = run_inproc(*args)
        assert res.code != 0 and res.err.startswith("error: ") and message in res.err, res.err
        assert res.err.count("\n") == 1

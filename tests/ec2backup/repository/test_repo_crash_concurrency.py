"""Crash safety (kill -9 mid-backup), concurrent backups, locks vs prune, exact prune."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

from repo_helpers import REPO_ROOT, cli_cmd, list_objects, open_repo, run_inproc, run_sub
from repo_imagegen import BS, make_image, sha256_file

from ec2backup.repository.check import check, referenced


def _packs(url: str) -> set[str]:
    return {n for n in list_objects(url) if n.startswith("data/")}


def test_kill9_during_backup_then_rerun(init_repo: str, tmp_path: Path) -> None:
    """kill -9 at several moments; after each the repository checks clean; a rerun completes,
    adopts the packs already uploaded and restores exactly."""
    rng = random.Random(5)
    killed_mid_run = 0
    # (kill after this many new packs appeared; 0 = at a random moment, maybe before any)
    for attempt, extra in enumerate((0, 1, 3, 0, 6)):
        img = tmp_path / f"img{attempt}"  # fresh content each time: no dedup with earlier runs
        digest = make_image(img, 64, seed=21 + attempt, zero=0.1, text=0.3)  # ~20 packs
        start = len(_packs(init_repo))
        proc = subprocess.Popen(
            cli_cmd("image", "backup", img, "--repo", init_repo),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if extra == 0:
            time.sleep(rng.uniform(0.0, 0.7))
        else:
            deadline = time.monotonic() + 30
            while len(_packs(init_repo)) < start + extra and proc.poll() is None:
                assert time.monotonic() < deadline
                time.sleep(0.002)
        if proc.poll() is None:
            killed_mid_run += 1
        proc.kill()
        proc.wait()
        res = run_inproc("repo", "check", "--repo", init_repo)
        assert res.code == 0, res.err
    assert killed_mid_run >= 3

    before = _packs(init_repo)
    assert before, "the killed runs uploaded nothing: the test did not exercise a crash"
    res = run_sub("image", "backup", img, "--repo", init_repo)
    assert res.code == 0, res.err
    rp = res.last_line
    assert before <= _packs(init_repo)  # nothing re-uploaded under another name, nothing lost
    repo = open_repo(init_repo)
    _, point = repo.load_restore_point(rp)
    vol = point.volumes[0]
    reused = vol.stats.blocks_read - vol.stats.blocks_new
    assert reused > 0 and vol.stats.blocks_new < vol.stats.blocks_read
    out = tmp_path / "out"
    assert run_inproc("image", "restore", rp, "--repo", init_repo, "-o", out).code == 0
    assert sha256_file(out) == digest
    assert check(repo, read_data=True).ok


def test_two_backups_at_once(init_repo: str, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    da = make_image(a, 24, seed=31, zero=0.1)
    with open(a, "rb") as src, open(b, "wb") as dst:  # b shares its first half with a
        dst.write(src.read(12 * BS))
    with open(b, "ab") as dst:
        dst.write(random.Random(2).randbytes(12 * BS))
    db = sha256_file(b)
    procs = [
        subprocess.Popen(
            cli_cmd("image", "backup", p, "--repo", init_repo),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for p in (a, b)
    ]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], results
    ids = [out.strip().splitlines()[-1] for out, _ in results]
    for rp, digest in zip(ids, (da, db), strict=True):
        out = tmp_path / f"out-{rp[:6]}"
        assert run_inproc("image", "restore", rp, "--repo", init_repo, "-o", out).code == 0
        assert sha256_file(out) == digest
    assert check(open_repo(init_repo), read_data=True).ok


def test_prune_refuses_or_waits_while_backup_holds_lock(init_repo: str, tmp_path: Path) -> None:
    repo = open_repo(init_repo)
    lock = repo.lock(exclusive=False, purpose="backup (test)")
    try:
        res = run_inproc("repo", "prune", "--repo", init_repo)
        assert res.code == 5 and "locked" in res.err and "backup (test)" in res.err, res.err
    finally:
        timer = threading.Timer(1.0, lock.release)
        timer.start()
    t0 = time.monotonic()
    res = run_inproc("repo", "prune", "--repo", init_repo, "--lock-wait", "20")
    timer.join()
    assert res.code == 0, res.err
    assert time.monotonic() - t0 >= 0.9  # it waited for the backup's lock to go
    # and a backup waits for / refuses a running prune
    excl = repo.lock(exclusive=True, purpose="prune (test)")
    try:
        img = tmp_path / "img"
        img.write_bytes(b"x" * 1000)
        res = run_inproc("image", "backup", img, "--repo", init_repo, "--lock-wait", "0")
        assert res.code == 5 and "prune (test)" in res.err
    finally:
        excl.release()


def test_forget_then_prune_frees_exactly_unreferenced(init_repo: str, tmp_path: Path) -> None:
    rng = random.Random(77)
    shared = [rng.randbytes(BS) for _ in range(3)]
    only_a = [rng.randbytes(BS) for _ in range(5)]
    only_b = [rng.randbytes(BS) for _ in range(4)]
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"".join(only_a[:2] + shared + only_a[2:]))
    b.write_bytes(b"".join(shared + only_b))
    rp_a = run_inproc("image", "backup", a, "--repo", init_repo).last_line
    rp_b = run_inproc("image", "backup", b, "--repo", init_repo).last_line
    # a third backup that is forgotten too, and a pack left by a "crashed" run
    rp_c = run_inproc("image", "backup", a, "--repo", init_repo, "--parent", rp_a).last_line
    assert run_inproc("repo", "forget", rp_a[:8], rp_c[:8], "--repo", init_repo).code == 0

    # two phases: the first prune marks, a later one (here with no grace period) deletes
    marking = run_inproc("repo", "prune", "--repo", init_repo, "--grace-hours", "0")
    assert marking.code == 0, marking.err
    assert "freed 0 B (0 packs, 0 map pages" in marking.err
    res = run_inproc("repo", "prune", "--repo", init_repo, "--grace-hours", "0")
    assert res.code == 0, res.err
    assert "marked 0 B for deletion" in res.err
    assert not [n for n in list_objects(init_repo) if n.startswith("marks/")]
    repo = open_repo(init_repo)
    index = repo.load_index(refresh=True)
    _rps, pages, blobs = referenced(repo)
    assert set(index.blobs) == blobs  # nothing unreferenced is left ...
    assert len(blobs) == len(shared) + len(only_b)  # ... and nothing referenced is gone
    stored_blobs = sum(len(p.blobs) for p in index.packs.values())
    assert stored_blobs == len(blobs)  # no duplicate copies either
    assert {n.rsplit("/", 1)[1] for n in list_objects(init_repo) if n.startswith("maps/")} == pages
    assert _packs(init_repo) == {f"data/{p[:2]}/{p}" for p in index.packs}
    assert check(repo, read_data=True).ok
    out = tmp_path / "out"
    assert run_inproc("image", "restore", rp_b, "--repo", init_repo, "-o", out).code == 0
    assert sha256_file(out) == sha256_file(b)
    objects = list_objects(init_repo)
    again = run_inproc("repo", "prune", "--repo", init_repo)
    assert again.code == 0 and "freed 0 B" in again.err and "marked 0 B" in again.err
    assert {n: s for n, s in list_objects(init_repo).items() if not n.startswith("index/")} == {
        n: s for n, s in objects.items() if not n.startswith("index/")
    }
    assert os.environ.get("EC2BACKUP_REPO_PASSWORD")

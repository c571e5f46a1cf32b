"""Two-phase prune (issue 14): a prune marks what is unused, a later prune deletes it after the
grace period; what is referenced again meanwhile is recovered, never deleted. The old prune
deleted at once, so each of these fails on it."""

from __future__ import annotations

import datetime as dt
import os
import random
import time
from pathlib import Path

import pytest
from repo_helpers import list_objects, open_repo, run_inproc
from repo_imagegen import BS, sha256_file

from ec2backup.errors import UserError
from ec2backup.repository.check import check
from ec2backup.repository.locks import REFRESH_EVERY, LockInfo, LockLost, _write
from ec2backup.repository.marks import MARK_PREFIX
from ec2backup.repository.prune import prune
from ec2backup.repository.repo import Repository

HOUR = dt.timedelta(hours=1)


def _objects(url: str, prefix: str) -> set[str]:
    return {n for n in list_objects(url) if n.startswith(prefix)}


def _prune(url: str, grace: dt.timedelta = HOUR * 23):  # type: ignore[no-untyped-def]
    repo = open_repo(url)
    with repo.lock(exclusive=True, purpose="test prune"):
        return prune(repo, grace=grace)


def _two_images(tmp_path: Path) -> tuple[Path, Path]:
    rng = random.Random(14)
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"".join(rng.randbytes(BS) for _ in range(6)))
    b.write_bytes(b"".join(rng.randbytes(BS) for _ in range(5)))
    return a, b


def _restores_exactly(url: str, rp: str, image: Path, out: Path) -> None:
    res = run_inproc("image", "restore", rp, "--repo", url, "-o", out)
    assert res.code == 0, res.err
    assert sha256_file(out) == sha256_file(image)


def test_prune_marks_first_and_a_later_prune_deletes_after_the_grace_period(
    init_repo: str, tmp_path: Path
) -> None:
    a, b = _two_images(tmp_path)
    rp_a = run_inproc("image", "backup", a, "--repo", init_repo).last_line
    run_inproc("image", "backup", b, "--repo", init_repo)
    packs_before = _objects(init_repo, "data/")
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", init_repo).code == 0

    first = _prune(init_repo)
    assert first.packs_marked > 0 and first.pages_marked > 0 and first.bytes_marked > 0
    assert (first.packs_deleted, first.pages_deleted, first.bytes_freed) == (0, 0, 0)
    assert _objects(init_repo, "data/") == packs_before  # nothing deleted yet
    assert len(_objects(init_repo, MARK_PREFIX)) == 1
    repo = open_repo(init_repo)
    report = check(repo, read_data=True)
    assert report.ok and report.marked_packs == first.packs_marked
    assert not any("not in any index" in w for w in report.warnings)  # marked, not orphans

    # within the grace period a later prune waits, and says why
    second = _prune(init_repo)
    assert second.packs_deleted == 0 and second.packs_marked == 0
    assert len(second.marks_pending) == 1 and "grace period" in second.marks_pending[0]
    assert _objects(init_repo, "data/") == packs_before

    # the CLI: `--grace-hours 0` deletes what is marked, and only that
    res = run_inproc("repo", "prune", "--repo", init_repo, "--grace-hours", "0")
    assert res.code == 0, res.err
    assert f"({first.packs_marked} packs, {first.pages_marked} map pages marked earlier)" in res.err
    remaining = _objects(init_repo, "data/")
    assert len(packs_before - remaining) == first.packs_marked
    assert not _objects(init_repo, MARK_PREFIX)
    assert check(open_repo(init_repo), read_data=True).ok
    rp_b = open_repo(init_repo).list_restore_points()[0][0]
    _restores_exactly(init_repo, rp_b, b, tmp_path / "b.out")


def test_a_late_restore_point_on_marked_data_restores_and_is_recovered(
    init_repo: str, tmp_path: Path
) -> None:
    """A holder that lost its lock (or raced a prune) commits a restore point naming packs and
    pages a prune has just marked: it restores, `repo check` passes, and the next prune, even
    with no grace period, puts the packs back into the index instead of deleting them."""
    a, b = _two_images(tmp_path)
    rp_a = run_inproc("image", "backup", a, "--repo", init_repo).last_line
    run_inproc("image", "backup", b, "--repo", init_repo)
    repo = open_repo(init_repo)
    _oid, point = repo.load_restore_point(rp_a)
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", init_repo).code == 0
    marked = _prune(init_repo)
    assert marked.packs_marked > 0
    packs = _objects(init_repo, "data/")

    late = open_repo(init_repo).save_restore_point(point)
    _restores_exactly(init_repo, late, a, tmp_path / "late.out")  # read through the mark
    report = check(open_repo(init_repo), read_data=True)
    assert report.ok, report.errors
    assert any("marked for deletion" in w for w in report.warnings)

    recovered = _prune(init_repo, grace=dt.timedelta(0))
    assert recovered.packs_recovered == marked.packs_marked
    assert recovered.pages_recovered == marked.pages_marked
    assert recovered.packs_deleted == 0 and recovered.pages_deleted == 0
    assert _objects(init_repo, "data/") == packs
    assert not _objects(init_repo, MARK_PREFIX)
    report = check(open_repo(init_repo), read_data=True)
    assert report.ok and not report.warnings and report.marked_packs == 0
    _restores_exactly(init_repo, late, a, tmp_path / "late2.out")
    assert _prune(init_repo, grace=dt.timedelta(0)).packs_marked == 0  # all in use again


def test_backups_do_not_adopt_marked_packs(init_repo: str, tmp_path: Path) -> None:
    """A backup adopts packs in no index (left by a crash); a marked pack is in no index too,
    and adopting it would keep it forever."""
    a, b = _two_images(tmp_path)
    rp_a = run_inproc("image", "backup", a, "--repo", init_repo).last_line
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", init_repo).code == 0
    marked = _prune(init_repo)
    res = run_inproc("image", "backup", b, "--repo", init_repo)
    assert res.code == 0, res.err
    repo = open_repo(init_repo)
    index = repo.load_index(refresh=True)
    assert not set(repo.marked_index().packs) & set(index.packs)
    gone = _prune(init_repo, grace=dt.timedelta(0))
    assert gone.packs_deleted == marked.packs_marked


def test_a_damaged_mark_stops_prune_with_one_line_and_backups_go_on(
    init_repo: str, tmp_path: Path
) -> None:
    a, b = _two_images(tmp_path)
    rp_a = run_inproc("image", "backup", a, "--repo", init_repo).last_line
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", init_repo).code == 0
    _prune(init_repo)
    repo = open_repo(init_repo)
    (name,) = _objects(init_repo, MARK_PREFIX)
    repo.backend.put(name, b"\x00" * 64)
    packs = _objects(init_repo, "data/")
    res = run_inproc("repo", "prune", "--repo", init_repo, "--grace-hours", "0")
    assert res.code != 0 and name in res.err and len(res.err.strip().splitlines()) == 1
    assert _objects(init_repo, "data/") == packs
    assert run_inproc("image", "backup", b, "--repo", init_repo).code == 0


def test_a_lock_alive_across_the_marking_holds_the_deletion(tmp_path: Path) -> None:
    """A lock that existed when the prune marked and was refreshed since belongs to a holder
    that may have read the index before the marking: nothing is deleted while it is there."""
    url = str(tmp_path / "repo")
    assert run_inproc("repo", "init", "--repo", url).code == 0
    a, _b = _two_images(tmp_path)
    rp_a = run_inproc("image", "backup", a, "--repo", url).last_line
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", url).code == 0
    repo = open_repo(url)
    ghost = "locks/" + "ab" * 16
    _write(repo, ghost, LockInfo(exclusive=False, purpose="a paused backup"))
    path = Path(url) / ghost
    ten_min_ago = time.time() - 600
    os.utime(path, (ten_min_ago, ten_min_ago))  # stale: the prune may proceed
    marked = _prune(url)
    assert marked.packs_marked > 0
    os.utime(path, (ten_min_ago + 120, ten_min_ago + 120))  # refreshed after the marking
    held = _prune(url, grace=dt.timedelta(0))
    assert held.packs_deleted == 0
    assert any(ghost in p and "older than the marking" in p for p in held.marks_pending)
    assert run_inproc("repo", "unlock", "--repo", url).code == 0  # stale: removed
    assert _prune(url, grace=dt.timedelta(0)).packs_deleted == marked.packs_marked


def test_a_paused_holder_does_not_bring_its_lock_back(tmp_path: Path) -> None:
    """A process paused past the hold limit (SIGSTOP, a frozen VM) must not rewrite its lock
    when it wakes: others may have taken it for stale and pruned meanwhile."""
    repo = Repository.create(str(tmp_path / "repo"), b"pw-pause", pack_size=1 << 20)
    lock = repo.lock(exclusive=False, purpose="paused")
    try:
        written = repo.backend.get(lock.name)
        lock._refreshed -= (REFRESH_EVERY * 5).total_seconds()  # woke up five intervals later
        lock.refresh()
        assert repo.backend.get(lock.name) == written  # not rewritten
        with pytest.raises(LockLost, match="not refreshed"):
            lock.check()
    finally:
        lock.release()


def test_prune_without_the_exclusive_lock_refuses(init_repo: str) -> None:
    repo = open_repo(init_repo)
    with pytest.raises(UserError, match="exclusive"):
        prune(repo)
    with repo.lock(exclusive=False, purpose="shared"), pytest.raises(UserError, match="exclusive"):
        prune(repo)

"""Locks: staleness by the repository's clock, holders that know they lost their lock, read
errors that are errors, damaged lock objects."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import PASSWORD, list_objects, make_bucket, open_repo, run_inproc

from ec2backup.repository import locks
from ec2backup.repository.backend import S3Backend
from ec2backup.repository.locks import LockInfo, LockLost, list_locks
from ec2backup.repository.repo import Repository
from ec2backup.repository.writer import BackupWriter, commit_restore_point


def _local(tmp_path: Path) -> tuple[str, Repository]:
    url = str(tmp_path / "repo")
    assert run_inproc("repo", "init", "--repo", url).code == 0
    return url, open_repo(url)


def _plant(repo: Repository, name: str, info: LockInfo, age: dt.timedelta | None = None) -> None:
    repo.save_named(name, info.model_dump_json().encode())
    if age is not None:  # the object's own time, as the repository (here a file system) sees it
        path = Path(repo.backend.location()) / name
        then = time.time() - age.total_seconds()
        os.utime(path, (then, then))


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "0"])
    proc.wait()
    return proc.pid


def test_a_dead_process_on_this_host_still_holds_its_lock_until_it_goes_stale(
    tmp_path: Path,
) -> None:
    """Host names repeat (ip-10-0-1-23 in two VPCs, containers): a pid that is not alive here
    says nothing about a lock. Only the lock's age by the repository's clock does."""
    url, repo = _local(tmp_path)
    _plant(repo, "locks/deadbeef", LockInfo(exclusive=True, purpose="prune", pid=_dead_pid()))
    res = run_inproc("repo", "prune", "--repo", url)
    assert res.code == 5 and "exclusive lock for prune" in res.err, res.err
    assert run_inproc("repo", "unlock", "--repo", url).code == 0
    assert "locks/deadbeef" in list_objects(url)  # not stale: kept
    os.utime(Path(url) / "locks/deadbeef", (time.time() - 301, time.time() - 301))
    assert run_inproc("repo", "check", "--repo", url).code == 0  # stale: ignored
    assert run_inproc("repo", "unlock", "--repo", url).code == 0
    assert not [n for n in list_objects(url) if n.startswith("locks/")]


def test_staleness_ignores_the_holders_clock(tmp_path: Path) -> None:
    """A lock written by a host whose clock is an hour behind is fresh if its object is."""
    url, repo = _local(tmp_path)
    behind = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    _plant(repo, "locks/skewed", LockInfo(exclusive=True, purpose="prune", time=behind))
    res = run_inproc("image", "backup", str(_image(tmp_path)), "--repo", url, "--lock-wait", "0")
    assert res.code == 5 and "prune" in res.err, res.err
    # and one whose clock is ahead is stale once its object is old
    ahead = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    _plant(
        repo,
        "locks/skewed",
        LockInfo(exclusive=True, purpose="prune", time=ahead),
        age=locks.LOCK_TTL + dt.timedelta(seconds=5),
    )
    res = run_inproc("image", "backup", str(_image(tmp_path)), "--repo", url, "--lock-wait", "0")
    assert res.code == 0, res.err


def _image(tmp_path: Path) -> Path:
    img = tmp_path / "img"
    if not img.exists():
        img.write_bytes(os.urandom(600_000))
    return img


def test_a_damaged_lock_is_reported_and_ignored_by_shared_lockers(tmp_path: Path) -> None:
    url, _repo = _local(tmp_path)
    (Path(url) / "locks").mkdir(exist_ok=True)
    (Path(url) / "locks/garbage").write_bytes(b"not a sealed lock")
    res = run_inproc("image", "backup", str(_image(tmp_path)), "--repo", url, "--lock-wait", "0")
    assert res.code == 0, res.err  # one unreadable object no longer blocks every backup
    res = run_inproc("repo", "prune", "--repo", url)
    assert res.code == 5 and "locks/garbage (damaged" in res.err, res.err
    assert run_inproc("repo", "unlock", "--repo", url).code == 0  # removes damaged ones
    assert run_inproc("repo", "prune", "--repo", url).code == 0


def test_a_holder_whose_lock_was_removed_or_replaced_stops_before_committing(
    tmp_path: Path,
) -> None:
    _url, repo = _local(tmp_path)
    for how in ("removed", "replaced"):
        lock = repo.lock(exclusive=False, purpose="backup (test)")
        writer = BackupWriter(repo, name="vol", size=4 << 20, checkpoint_key=f"k-{how}")
        writer.add(0, os.urandom(512 * 1024))
        writer.checkpoint()  # fine while held
        if how == "removed":
            repo.backend.delete(lock.name)  # `repo unlock --remove-all` from elsewhere
        else:
            info = LockInfo(exclusive=False, purpose="someone else")
            repo.save_named(lock.name, info.model_dump_json().encode())
        lock.refresh()  # what the refresh thread does every minute
        with pytest.raises(LockLost, match=how):
            writer.checkpoint()
        record = writer.finish()
        with pytest.raises(LockLost):
            commit_restore_point(repo, [record])
        lock.release()
        # never deletes what may now be another's lock
        assert (lock.name in list_objects(str(repo.backend.location()))) == (how == "replaced")
        repo.backend.delete(lock.name)
    assert not repo.list_ids("restorepoint")


def test_a_holder_whose_refreshes_fail_gives_up_before_others_may_take_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _url, repo = _local(tmp_path)
    with repo.lock(exclusive=False, purpose="backup (test)") as lock:
        lock.check()
        assert locks.HOLD_LIMIT < locks.LOCK_TTL
        monkeypatch.setattr(locks, "HOLD_LIMIT", dt.timedelta(0))  # as if it were 4 min later
        with pytest.raises(LockLost, match="not refreshed"):
            repo.check_locks()


@pytest.fixture
def s3_repo(lab_aws: Any, aws_env: dict[str, str]) -> Repository:
    url = f"s3://{make_bucket(lab_aws)}/r"
    return Repository.create(url, PASSWORD.encode())


def _fail_reads_of(repo: Repository, prefix: str, status: int) -> None:
    """Answer GETs and HEADs of keys under `prefix` with `status` (as S3 does when a policy
    denies them, or under a brownout), before anything reaches the endpoint."""
    from botocore.awsrequest import AWSResponse

    assert isinstance(repo.backend, S3Backend)

    def deny(request: Any, **_: Any) -> AWSResponse | None:
        if request.method in ("GET", "HEAD") and f"/{prefix}" in request.url:
            body = b"<Error><Code>AccessDenied</Code><Message>denied</Message></Error>"
            return AWSResponse(request.url, status, {}, _Raw(body))
        return None

    repo.backend.client.meta.events.register_first("before-send.s3", deny)


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Any:
        yield self._body

    def read(self, *_: Any) -> bytes:
        body, self._body = self._body, b""
        return body


def test_a_lock_that_cannot_be_read_is_an_error_not_an_absent_lock(s3_repo: Repository) -> None:
    holder = s3_repo.lock(exclusive=True, purpose="prune (test)")
    try:
        other = Repository.open(s3_repo.backend.url, PASSWORD.encode())
        _fail_reads_of(other, "r/locks/", 403)
        with pytest.raises(Exception, match=r"403|AccessDenied"):
            list_locks(other)
        with pytest.raises(Exception, match=r"403|AccessDenied"):
            other.lock(exclusive=False, purpose="backup")
        assert other.backend.exists("config")  # other objects still read
        with pytest.raises(Exception, match=r"403|AccessDenied"):
            other.backend.exists(holder.name)  # a HEAD denied is not "absent"
    finally:
        holder.release()


def test_the_lock_ttl_is_a_repository_parameter(tmp_path: Path) -> None:
    """`repo init --lock-ttl-seconds`: every locker of the repository judges staleness by it and
    refreshes against it (a judge with a shorter TTL than the holders' refresh would take live
    locks for stale)."""
    url = str(tmp_path / "repo")
    assert run_inproc("repo", "init", "--repo", url, "--lock-ttl-seconds", "5").code != 0
    assert run_inproc("repo", "init", "--repo", url, "--lock-ttl-seconds", "20").code == 0
    repo = open_repo(url)
    assert repo.config.lock_ttl_seconds == 20
    assert locks.refresh_every(repo) == dt.timedelta(seconds=4)
    assert locks.hold_limit(repo) == dt.timedelta(seconds=16)
    info = LockInfo(exclusive=True, purpose="prune")
    _plant(repo, "locks/recent", info, age=dt.timedelta(seconds=10))  # stale at 5 min, not 20 s
    res = run_inproc("image", "backup", str(_image(tmp_path)), "--repo", url, "--lock-wait", "0")
    assert res.code == 5 and "prune" in res.err, res.err
    _plant(repo, "locks/recent", info, age=dt.timedelta(seconds=25))
    res = run_inproc("image", "backup", str(_image(tmp_path)), "--repo", url, "--lock-wait", "0")
    assert res.code == 0, res.err
    with repo.lock(exclusive=False, purpose="refreshing") as lock:
        written = repo.backend.get(lock.name)
        wait_for = time.monotonic() + 10
        while repo.backend.get(lock.name) == written:  # rewritten within a refresh interval
            assert time.monotonic() < wait_for, "the lock was not refreshed every 4 s"
            time.sleep(0.2)

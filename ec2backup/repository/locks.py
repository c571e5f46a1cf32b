"""Repository locks: shared (backup, restore, check, forget) and exclusive (prune).

A lock is an encrypted object `locks/<random id>` rewritten in place by a background thread
every `REFRESH_EVERY`. Acquire = write our lock, then list: if a live conflicting lock exists,
remove ours and wait or give up. Two lockers racing both see each other and both back off (then
retry with jitter), so at most one exclusive holder ever proceeds.

Staleness is judged by the repository's own clock, never by host names or process ids (EC2
host names like `ip-10-0-1-23` repeat across VPCs, containers share them, and clocks of two
hosts differ): a lock is stale when its object's last-modified time is more than `LOCK_TTL`
older than that of an object the judge has just written (its own lock, or a probe).

A holder knows whether it still holds its lock: each refresh first reads the object back, and
a lock found missing (removed by `repo unlock --remove-all`, or taken for stale) or replaced, or
not refreshed for `HOLD_LIMIT`, is lost. `Lock.check()` raises `LockLost` from then on, and the
repository calls it before it writes a restore point or a checkpoint and before prune deletes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import secrets
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from ec2backup.errors import UserError
from ec2backup.repository.backend import ObjectMissing

if TYPE_CHECKING:
    from ec2backup.repository.repo import Repository

log = logging.getLogger(__name__)

# The lock TTL is a repository parameter (`config.lock_ttl_seconds`): every locker of one
# repository must judge staleness with the same TTL its holders refresh against. Default:
# five minutes, so a `kill -9`ed backup blocks prune for five minutes, not half an hour.
DEFAULT_LOCK_TTL = dt.timedelta(minutes=5)
# A holder rewrites its lock five times per TTL (every minute by default: one PUT a minute per
# session is noise on the bill), so it survives four failed refreshes in a row (an S3
# brownout) before anyone may take it for dead.
REFRESHES_PER_TTL = 5
LOCK_TTL = DEFAULT_LOCK_TTL
REFRESH_EVERY = DEFAULT_LOCK_TTL / REFRESHES_PER_TTL
# The holder gives up one interval before others may call it stale: that interval covers the
# latency of its last write and the drift between its monotonic clock and the repository's.
HOLD_LIMIT = LOCK_TTL - REFRESH_EVERY


def lock_ttl(repo: Repository) -> dt.timedelta:
    return dt.timedelta(seconds=repo.config.lock_ttl_seconds)


def refresh_every(repo: Repository) -> dt.timedelta:
    return lock_ttl(repo) / REFRESHES_PER_TTL


def hold_limit(repo: Repository) -> dt.timedelta:
    """How long a holder may go without a successful refresh (scaled like HOLD_LIMIT)."""
    return lock_ttl(repo) * (HOLD_LIMIT / LOCK_TTL)


LOCK_PREFIX = "locks/"
PROBE_PURPOSE = "clock probe"


class RepositoryLocked(UserError):
    exit_code = 5


class LockLost(UserError):
    """This process no longer holds its lock: it must stop before writing anything that other
    lockers rely on (a restore point, a checkpoint, a deletion)."""

    exit_code = 5


class LockInfo(BaseModel):
    exclusive: bool
    purpose: str
    # informational (shown to users); staleness uses the object's last-modified time
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    hostname: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (
            f"{kind} lock for {self.purpose} by pid {self.pid} on {self.hostname} "
            f"since {self.time:%Y-%m-%d %H:%M:%S}Z"
        )


class LockObject(BaseModel):
    """One object under locks/: its info (None if it cannot be decrypted or parsed) and its
    last-modified time as the repository reports it."""

    name: str
    info: LockInfo | None
    modified: dt.datetime
    damage: str = ""

    def is_stale(self, repo_now: dt.datetime, ttl: dt.timedelta = LOCK_TTL) -> bool:
        return repo_now - self.modified > ttl

    def describe(self) -> str:
        if self.info is None:
            return f"{self.name} (damaged: {self.damage})"
        return self.info.describe()


def list_locks(repo: Repository) -> list[LockObject]:
    """Every lock object. A read that fails for any reason but absence raises (an unreadable
    lock is not an absent one); a lock that does not decrypt or parse is damaged (info None)."""
    from ec2backup.repository.repo import CorruptObjectError

    out: list[LockObject] = []
    for name, _size, modified in repo.backend.list_modified(LOCK_PREFIX):
        try:
            raw = repo.load_named(name)
        except ObjectMissing:
            continue
        except CorruptObjectError as exc:
            out.append(LockObject(name=name, info=None, modified=modified, damage=str(exc)))
            continue
        try:
            info = LockInfo.model_validate_json(raw)
        except ValidationError as exc:
            damage = f"bad content: {exc.error_count()} errors"
            out.append(LockObject(name=name, info=None, modified=modified, damage=damage))
            continue
        out.append(LockObject(name=name, info=info, modified=modified))
    return out


def _write(repo: Repository, name: str, info: LockInfo) -> bytes:
    """Seal and store a lock object; its stored bytes (what a refresh expects to find)."""
    sealed = repo.seal_named(name, info.model_dump_json().encode())
    repo.backend.put(name, sealed)
    return sealed


def _repo_now(locks: list[LockObject], own: str) -> dt.datetime:
    for lock in locks:
        if lock.name == own:
            return lock.modified
    raise LockLost(f"lock {own} vanished right after it was written")


def conflicts(
    locks: list[LockObject], own: str, exclusive: bool, ttl: dt.timedelta = LOCK_TTL
) -> list[LockObject]:
    """Live locks that keep a locker of this kind out. Damaged ones are reported and ignored by
    shared lockers; an exclusive locker cannot know what a damaged lock protects and waits for
    it to go stale (or for `repo unlock`)."""
    now = _repo_now(locks, own)
    out = []
    for lock in locks:
        if lock.name == own or lock.is_stale(now, ttl):
            continue
        if lock.info is None:
            if exclusive:
                out.append(lock)
            else:
                log.warning("ignoring damaged lock %s", lock.describe())
        elif lock.info.purpose == PROBE_PURPOSE:
            continue
        elif exclusive or lock.info.exclusive:
            out.append(lock)
    return out


class Lock:
    def __init__(self, repo: Repository, name: str, info: LockInfo, written: bytes) -> None:
        self.repo = repo
        self.name = name
        self.info = info
        self._written = written  # the sealed object last written: a refresh checks it is there
        self._refreshed = time.monotonic()
        self._lost: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True, name="lock-refresh")
        self._thread.start()

    @classmethod
    def acquire(cls, repo: Repository, exclusive: bool, purpose: str, wait: float = 0.0) -> Lock:
        deadline = time.monotonic() + wait
        while True:
            name = LOCK_PREFIX + secrets.token_hex(16)
            info = LockInfo(exclusive=exclusive, purpose=purpose)
            written = _write(repo, name, info)
            try:
                found = conflicts(list_locks(repo), name, exclusive, lock_ttl(repo))
            except BaseException:
                with contextlib.suppress(Exception):
                    repo.backend.delete(name)
                raise
            if not found:
                lock = cls(repo, name, info, written)
                repo.held_locks.add(lock)
                return lock
            repo.backend.delete(name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RepositoryLocked(
                    f"repository is locked ({found[0].describe()}"
                    + (f" and {len(found) - 1} more" if len(found) > 1 else "")
                    + "); try again later, or `ec2backup repo unlock` if that process is gone"
                )
            time.sleep(min(remaining, 0.5 + random.random()))

    # ---- holding ----

    def refresh(self) -> None:
        """Read the lock back, then rewrite it; marks the lock lost if it was removed or
        replaced. Raises on a storage error (the caller retries at the next tick)."""
        if self._lost is not None:
            return
        idle = time.monotonic() - self._refreshed
        if idle > self._hold_limit():
            # a paused or starved process: others may have judged the lock stale meanwhile (and
            # pruned under it); rewriting it now would bring a dead lock back to life
            self._lose(f"not refreshed for {idle:.0f}s")
            return
        try:
            current = self.repo.backend.get(self.name)
        except ObjectMissing:
            self._lose("its object was removed (taken for stale, or `repo unlock --remove-all`)")
            return
        if current != self._written:
            self._lose("its object was replaced by another")
            return
        info = self.info.model_copy(update={"time": dt.datetime.now(dt.UTC)})
        self._written = _write(self.repo, self.name, info)
        self.info = info
        self._refreshed = time.monotonic()

    def _hold_limit(self) -> float:
        # the module's HOLD_LIMIT scaled to this repository's TTL (tests patch HOLD_LIMIT)
        return hold_limit(self.repo).total_seconds()

    def _lose(self, why: str) -> None:
        self._lost = why
        log.error("lost the %s: %s", self.info.describe(), why)

    def _refresh_loop(self) -> None:
        while not self._stop.wait(refresh_every(self.repo).total_seconds()):
            try:
                self.refresh()
            except Exception as exc:  # retried at the next tick; check() tells when it is too late
                log.warning("refreshing lock %s failed: %s", self.name, exc)

    def check(self) -> None:
        """Raise LockLost unless this lock is still ours and fresh enough that no one may have
        taken it for stale."""
        if self._stop.is_set():
            raise LockLost(f"the {self.info.describe()} was released")
        if self._lost is not None:
            raise LockLost(f"lost the {self.info.describe()}: {self._lost}")
        idle = time.monotonic() - self._refreshed
        if idle > self._hold_limit():
            self._lose(f"not refreshed for {idle:.0f}s (refreshes failing)")
            raise LockLost(f"lost the {self.info.describe()}: {self._lost}")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self.repo.held_locks.discard(self)
        if self._lost is not None:
            return  # not ours any more: never delete what may be another's
        with contextlib.suppress(Exception):  # a leftover lock goes stale after LOCK_TTL
            self.repo.backend.delete(self.name)

    def __enter__(self) -> Lock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def unlock(repo: Repository, remove_all: bool = False) -> list[str]:
    """Remove stale and damaged (or, with remove_all, every) locks; returns the removed names.
    Staleness is judged against a probe object written now (the repository's clock)."""
    probe = LOCK_PREFIX + secrets.token_hex(16)
    _write(repo, probe, LockInfo(exclusive=False, purpose=PROBE_PURPOSE))
    try:
        locks = list_locks(repo)
        now = _repo_now(locks, probe)
        removed = []
        for lock in locks:
            if lock.name == probe:
                continue
            if remove_all or lock.info is None or lock.is_stale(now, lock_ttl(repo)):
                repo.backend.delete(lock.name)
                removed.append(lock.name)
        return removed
    finally:
        repo.backend.delete(probe)

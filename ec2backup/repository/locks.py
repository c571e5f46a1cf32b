"""Repository locks: shared (backup, check, forget) and exclusive (prune).

A lock is an encrypted object `locks/<random id>` refreshed in place by a background thread.
Acquire = write our lock, then list: if a live conflicting lock exists, remove ours and wait or
give up. Two lockers racing both see each other and both back off (then retry with jitter), so
at most one exclusive holder ever proceeds. A lock is stale (ignored, and removed by
`repo unlock`) when it has not been refreshed for `LOCK_TTL`, or when it belongs to a dead
process on this host (a `kill -9`ed backup must not block prune for half an hour).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import secrets
import socket
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from ec2backup.errors import UserError

if TYPE_CHECKING:
    from ec2backup.repository.repo import Repository

# A holder refreshes every LOCK_TTL/3; a lock older than LOCK_TTL is presumed dead. Half an hour
# tolerates long GC pauses, clock skew between hosts and throttled S3 PUTs.
LOCK_TTL = dt.timedelta(minutes=30)
REFRESH_EVERY = LOCK_TTL.total_seconds() / 3
LOCK_PREFIX = "locks/"


class RepositoryLocked(UserError):
    exit_code = 5


class LockInfo(BaseModel):
    exclusive: bool
    purpose: str
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    hostname: str = Field(default_factory=socket.gethostname)
    pid: int = Field(default_factory=os.getpid)

    def is_stale(self, now: dt.datetime | None = None) -> bool:
        now = now or dt.datetime.now(dt.UTC)
        if now - self.time > LOCK_TTL:
            return True
        if self.hostname == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            except PermissionError:
                return False
        return False

    def describe(self) -> str:
        kind = "exclusive" if self.exclusive else "shared"
        return (
            f"{kind} lock for {self.purpose} by pid {self.pid} on {self.hostname} "
            f"since {self.time:%Y-%m-%d %H:%M:%S}Z"
        )


def list_locks(repo: Repository) -> list[tuple[str, LockInfo | None]]:
    """(object name, info); info is None for an unreadable lock object."""
    out: list[tuple[str, LockInfo | None]] = []
    for name, _ in repo.backend.list(LOCK_PREFIX):
        try:
            info: LockInfo | None = LockInfo.model_validate_json(repo.load_named(name))
        except Exception:
            if not repo.backend.exists(name):
                continue  # released while we listed
            info = None
        out.append((name, info))
    return out


class Lock:
    def __init__(self, repo: Repository, name: str, info: LockInfo) -> None:
        self.repo = repo
        self.name = name
        self.info = info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh_loop, daemon=True, name="lock-refresh")
        self._thread.start()

    @classmethod
    def acquire(cls, repo: Repository, exclusive: bool, purpose: str, wait: float = 0.0) -> Lock:
        deadline = time.monotonic() + wait
        while True:
            name = LOCK_PREFIX + secrets.token_hex(16)
            info = LockInfo(exclusive=exclusive, purpose=purpose)
            repo.save_named(name, info.model_dump_json().encode())
            conflicts = []
            for other, oinfo in list_locks(repo):
                if other == name:
                    continue
                if oinfo is None:
                    conflicts.append(f"{other} (unreadable)")
                elif not oinfo.is_stale() and (exclusive or oinfo.exclusive):
                    conflicts.append(oinfo.describe())
            if not conflicts:
                return cls(repo, name, info)
            repo.backend.delete(name)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RepositoryLocked(
                    f"repository is locked ({conflicts[0]}"
                    + (f" and {len(conflicts) - 1} more" if len(conflicts) > 1 else "")
                    + "); try again later, or `ec2backup repo unlock` if that process is gone"
                )
            time.sleep(min(remaining, 0.5 + random.random()))

    def _refresh_loop(self) -> None:
        while not self._stop.wait(REFRESH_EVERY):
            self.info = self.info.model_copy(update={"time": dt.datetime.now(dt.UTC)})
            # a failed refresh is retried at the next tick; the TTL leaves two more chances
            with contextlib.suppress(Exception):
                self.repo.save_named(self.name, self.info.model_dump_json().encode())

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
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
    """Remove stale (or, with remove_all, every) lock; returns the removed names."""
    removed = []
    for name, info in list_locks(repo):
        if remove_all or info is None or info.is_stale():
            repo.backend.delete(name)
            removed.append(name)
    return removed

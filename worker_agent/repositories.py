"""The repositories this agent has opened, kept for the next range or volume of its session.

A session's ranges run one after another (and a restore's volumes side by side) on one agent.
Opening a repository derives its key from the password (scrypt, a fifth of a second and more)
and loading its index fetches every index file (one GET each: seconds for a repository of a
few hundred files, more as it grows): done per range, that was most of an incremental's time.
Kept here, each use only lists the index files under its lock and adds the new ones
(`Repository.refresh_index`, which loads everything again if a prune rewrote the index
meanwhile). Thread-safe: the ranges of several streams share one object.
"""

from __future__ import annotations

import collections
import hashlib
import threading

from ec2backup.repository.repo import Repository

# An agent serves one session or restore, which writes to one repository (an archive copy
# reads two): a few is plenty, and each holds an index's scratch file and keys.
MAX_OPEN = 4

_open: collections.OrderedDict[tuple[str, bytes | None], Repository] = collections.OrderedDict()
_lock = threading.Lock()


def open_repository(url: str, password: bytes | None) -> Repository:
    """The repository at `url`, opened with `password` (None: with its KMS key) by an earlier
    call or now. Refresh its index (`refresh_index`) once its lock is held."""
    key = (url, None if password is None else hashlib.sha256(password).digest())
    with _lock:
        repo = _open.get(key)
        if repo is not None:
            _open.move_to_end(key)
            return repo
    repo = Repository.open(url, password)  # outside the lock: scrypt and GETs take a while
    with _lock:
        kept = _open.setdefault(key, repo)
        _open.move_to_end(key)
        while len(_open) > MAX_OPEN:
            _open.popitem(last=False)
    return kept


def forget() -> None:
    """Drop every kept repository (tests)."""
    with _lock:
        _open.clear()

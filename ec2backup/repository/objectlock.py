"""S3 Object Lock for a deduplicated repository (repository-format.md §10).

A fixed lock period per object does not protect deduplicated backups: a pack written a year
ago may hold most of today's restore point (kopia#1067). Here the lock follows references:
every restore point records its horizon (`lock_until`: its time + how long it is kept + a
margin) and, when it is committed, every object it needs (config, key files, the restore point
itself, its map pages, the packs of its blobs, the index files) is locked at least until that
horizon. An object reused by a newer restore point is extended to the newer horizon; nothing
is ever shortened.

Prune still "deletes" on such a bucket: a delete adds a delete marker (the object leaves the
repository's view) while the locked version stays until its lock ends; the repository's
lifecycle rule then expires it (`ensure_abort_multipart_rule(expire_noncurrent=True)`).
Nothing fails on a locked object: prune reports which objects stay stored until when.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ec2backup.repository.backend import S3Backend
from ec2backup.repository.blockmap import ID_SIZE, is_blob
from ec2backup.repository.repo import CONFIG_NAME, Repository, data_name
from ec2backup.repository.restorepoint import RestorePoint

# A lock extended is extended this much beyond what is needed, so that the daily backups that
# follow find it long enough and need no call (S3 bills each PutObjectRetention).
EXTENSION_SLACK = dt.timedelta(days=7)
# HEAD/PutObjectRetention calls in flight (S3 handles thousands per prefix per second).
LOCK_THREADS = 16


def enabled(repo: Repository) -> bool:
    return repo.config.object_lock is not None and isinstance(repo.backend, S3Backend)


def horizon(repo: Repository, when: dt.datetime, keep_days: int | None = None) -> dt.datetime:
    """How long a restore point of time `when` is protected: kept `keep_days` (its policy's
    retention; default: the repository's), plus the repository's margin."""
    settings = repo.config.object_lock
    assert settings is not None
    days = keep_days if keep_days is not None else settings.days
    return when + dt.timedelta(days=days + settings.margin_days)


def needed_objects(repo: Repository, rp_id: str, rp: RestorePoint) -> list[str]:
    """Every object name restoring `rp` needs."""
    names = {CONFIG_NAME, repo.object_name("restorepoint", rp_id)}
    names |= {name for name, _ in repo.backend.list("keys/")}
    names |= {repo.object_name("index", oid) for oid in repo.list_ids("index")}
    packs: set[str] = set()
    for volume in rp.volumes:
        for page_id in {p for p in volume.pages if p is not None}:
            names.add(repo.object_name("map", page_id))
            page = repo.load_page(page_id)
            for slot in range(0, len(page), ID_SIZE):
                blob_id = bytes(page[slot : slot + ID_SIZE])
                if is_blob(blob_id):
                    loc = repo.locate(blob_id)
                    if loc is not None:
                        packs.add(loc.pack_id)
    names |= {data_name(pid) for pid in packs}
    return sorted(names)


@dataclass
class LockReport:
    objects: int = 0  # objects the restore point needs
    extended: int = 0  # of those, locks set or extended now
    until: dt.datetime | None = None
    too_early: list[tuple[str, dt.datetime | None]] = field(default_factory=list)


def extend(
    repo: Repository,
    names: Iterable[str],
    until: dt.datetime,
    progress: Callable[[int], None] | None = None,
) -> LockReport:
    """Lock every object at least until `until` (never shorter than it already is)."""
    settings = repo.config.object_lock
    backend = repo.backend
    assert settings is not None and isinstance(backend, S3Backend)
    report = LockReport(until=until)

    def one(name: str) -> bool:
        _mode, current = backend.retention(name)
        if current is not None and current >= until:
            return False
        backend.set_retention(name, settings.mode, until + EXTENSION_SLACK)
        return True

    todo = list(names)
    report.objects = len(todo)
    with ThreadPoolExecutor(LOCK_THREADS) as pool:
        for i, changed in enumerate(pool.map(one, todo), 1):
            report.extended += int(changed)
            if progress is not None and i % 256 == 0:
                progress(i)
    return report


def lock_restore_point(repo: Repository, rp_id: str, rp: RestorePoint) -> LockReport:
    """What a commit does on an Object Lock repository: lock what `rp` needs to its horizon."""
    assert rp.lock_until is not None
    return extend(repo, needed_objects(repo, rp_id, rp), rp.lock_until)


def unexpired(repo: Repository, now: dt.datetime) -> list[tuple[str, RestorePoint]]:
    return [
        (rid, rp)
        for rid, rp in repo.list_restore_points()
        if rp.lock_until is not None and rp.lock_until > now
    ]


def relock(repo: Repository, names: Iterable[str], now: dt.datetime) -> LockReport | None:
    """After prune rewrote objects (new index files, repacked packs): lock them to the latest
    horizon of the restore points still protected (conservative: never too short)."""
    horizons = [rp.lock_until for _rid, rp in unexpired(repo, now) if rp.lock_until is not None]
    if not horizons:
        return None
    return extend(repo, names, max(horizons))


@dataclass
class Coverage:
    needed: int = 0
    covered: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def percent(self) -> float:
        return 100.0 * self.covered / self.needed if self.needed else 100.0


def coverage(repo: Repository, now: dt.datetime | None = None) -> Coverage:
    """Objects needed by restore points whose protection has not ended, and whether each is
    locked at least as long (`repo check`: the problems must be none)."""
    backend = repo.backend
    assert isinstance(backend, S3Backend)
    now = now or dt.datetime.now(dt.UTC)
    want: dict[str, dt.datetime] = {}
    for rid, rp in unexpired(repo, now):
        assert rp.lock_until is not None
        for name in needed_objects(repo, rid, rp):
            want[name] = max(want.get(name, rp.lock_until), rp.lock_until)
    out = Coverage(needed=len(want))

    def one(item: tuple[str, dt.datetime]) -> str | None:
        name, until = item
        _mode, current = backend.retention(name)
        if current is not None and current >= until:
            return None
        have = current.isoformat(timespec="seconds") if current else "no lock"
        return f"{name}: locked until {have}, needed until {until.isoformat(timespec='seconds')}"

    with ThreadPoolExecutor(LOCK_THREADS) as pool:
        for problem in pool.map(one, sorted(want.items())):
            if problem is None:
                out.covered += 1
            else:
                out.problems.append(problem)
    return out


def locked_now(repo: Repository, names: Iterable[str], now: dt.datetime) -> dict[str, dt.datetime]:
    """Of these objects, those whose current version is locked past `now`: name -> until
    (what a prune that deletes them leaves stored until then)."""
    backend = repo.backend
    assert isinstance(backend, S3Backend)

    def one(name: str) -> tuple[str, dt.datetime | None]:
        try:
            return name, backend.retention(name)[1]
        except Exception:  # already gone: nothing stays
            return name, None

    with ThreadPoolExecutor(LOCK_THREADS) as pool:
        return {n: u for n, u in pool.map(one, list(names)) if u is not None and u > now}

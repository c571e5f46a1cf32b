"""Deletion marks: the first phase of a two-phase prune (rustic's model, not restic's).

A prune never deletes what it finds unused. It writes a **mark** (`marks/<random id>`, sealed
like a lock) naming those packs and map pages, with the index entries of the marked packs, and
drops the packs from the index. A later prune deletes what a mark names once
  * the grace period has passed since the mark was written, by the repository's clock (the
    mark object's last-modified time against the pruner's own freshly written lock), and
  * no lock that existed when the mark was written is still alive (refreshed since): its
    holder may have read the index before the marking and may still reference marked data;
and only what is still unused then. A marked pack or page that a restore point or checkpoint
references again (a holder that lost its lock, a backup that wrote an identical page) is
**recovered**: its pack goes back into the index, and it leaves the mark.

Readers resolve a blob that is in no index through the marks (`Repository.locate`), so a
restore point that references a marked pack restores until that pack is recovered. Writers do
not deduplicate against marked packs, and crash repair does not adopt them.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, ValidationError

from ec2backup.errors import UserError
from ec2backup.repository.backend import ObjectMissing
from ec2backup.repository.index import IndexPack, IndexTable

if TYPE_CHECKING:
    from ec2backup.repository.repo import Repository

MARK_PREFIX = "marks/"
# rustic's `--keep-delete` default: a daily prune deletes what the previous day's prune marked,
# and a backup that started before a marking has a day to finish (or to notice a lost lock).
DEFAULT_GRACE = dt.timedelta(hours=23)


class PruneMark(BaseModel):
    version: Literal[1] = 1
    packs: list[str] = Field(default_factory=list)  # pack ids, indexed or not when marked
    pages: list[str] = Field(default_factory=list)  # map page ids
    # Index entries (a binary index table, base64) of the marked packs that were indexed: a
    # reader still finds their blobs, and a prune can put them back into the index.
    table: str = ""
    # Other lock objects present at the marking -> their last-modified time then.
    locks: dict[str, dt.datetime] = Field(default_factory=dict)
    # informational (the marker's clock); the grace period uses the object's last-modified
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))

    def index_table(self) -> IndexTable:
        if not self.table:
            return IndexTable.from_packs([])
        return IndexTable.decode(base64.b64decode(self.table))


@dataclass
class MarkObject:
    name: str
    modified: dt.datetime
    mark: PruneMark
    table: IndexTable

    def ready(self, now: dt.datetime, grace: dt.timedelta, locks: dict[str, dt.datetime]) -> str:
        """Why this mark's contents may not be deleted yet ("" when they may)."""
        waited = now - self.modified
        if waited < grace:
            return f"grace period: {_hours(grace - waited)} left"
        for name, then in self.mark.locks.items():
            if name in locks and locks[name] > then:
                return f"lock {name} older than the marking is still held"
        return ""


def _hours(delta: dt.timedelta) -> str:
    return f"{max(delta.total_seconds(), 0) / 3600:.1f}h"


def list_marks(repo: Repository) -> list[MarkObject]:
    """Every mark. Any mark that cannot be read, decrypted or parsed raises, naming it: a
    prune must not delete (or skip deleting) on incomplete information."""
    from ec2backup.repository.repo import CorruptObjectError

    out = []
    for name, _size, modified in repo.backend.list_modified(MARK_PREFIX):
        try:
            mark = PruneMark.model_validate_json(repo.load_named(name))
            table = mark.index_table()
        except ObjectMissing:
            continue  # deleted by a prune since the listing
        except (ValidationError, ValueError) as exc:
            raise CorruptObjectError(f"object {name} is corrupt: {exc}") from exc
        out.append(MarkObject(name, modified, mark, table))
    return out


def marks_due(repo: Repository, grace: dt.timedelta) -> bool:
    """Is a mark old enough that a prune may delete what it names? (This host's clock: a cheap
    test whether to prune at all; prune itself judges by the repository's clock.)"""
    now = dt.datetime.now(dt.UTC)
    marks = repo.backend.list_modified(MARK_PREFIX)
    return any(now - modified >= grace for _name, _size, modified in marks)


def save_mark(
    repo: Repository,
    packs: list[str],
    indexed: list[IndexPack],
    pages: list[str],
    locks: dict[str, dt.datetime],
) -> str:
    table = IndexTable.from_packs(indexed)
    mark = PruneMark(
        packs=packs,
        pages=pages,
        table=base64.b64encode(table.encode()).decode() if indexed else "",
        locks=locks,
    )
    name = MARK_PREFIX + secrets.token_hex(16)
    if not repo.backend.create(name, repo.seal_named(name, mark.model_dump_json().encode())):
        raise UserError(f"{name} already exists")  # 128 random bits: not a retry's doing
    return name

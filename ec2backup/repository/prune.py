"""`repo prune` (remove data no restore point references) and `repo stats`.

Prune is two-phase (rustic's model; see marks.py): what it finds unused it marks, and a later
prune deletes it after a grace period. It runs under the exclusive lock, so no backup is
writing, and is ordered so that a crash at any step leaves a valid repository:
  1. read what restore points, checkpoints and marks reference or name (abort on any
     unreadable object); referenced blobs found only in marked packs are recovered;
  2. repack the still-used blobs of partly used packs into new packs (ciphertext copied as is,
     after authenticating it);
  3. write a mark naming the packs (with their index entries) and map pages now unused;
  4. write new index files describing every kept, new and recovered pack, then delete the old
     index files (now superseded);
  5. delete what the marks whose grace period is over still name and nothing uses, then those
     marks; marks that lost recovered items are rewritten without them.
A crash after 3 leaves a mark naming indexed packs (never deleted while indexed); after 4,
duplicate index entries; during 5, marks naming deleted objects: all harmless, and cleaned up
by the next prune.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field

from ec2backup import crypto
from ec2backup.errors import UserError
from ec2backup.repository import objectlock
from ec2backup.repository.check import referenced
from ec2backup.repository.index import IndexPack, index_pack
from ec2backup.repository.locks import PROBE_PURPOSE, Lock, list_locks
from ec2backup.repository.marks import DEFAULT_GRACE, MarkObject, list_marks, save_mark
from ec2backup.repository.pack import BlobCodec, PackBuilder
from ec2backup.repository.repo import CorruptObjectError, Repository, data_name, iter_chunks

# Packs per index file written by prune: keeps each index object a few MB at most.
PACKS_PER_INDEX = 2000


@dataclass
class PruneReport:
    packs_deleted: int = 0
    packs_written: int = 0
    blobs_removed: int = 0  # index entries dropped (their packs marked) by this prune
    blobs_kept: int = 0
    bytes_freed: int = 0  # deleted by this prune (what earlier prunes marked)
    pages_deleted: int = 0
    index_files_replaced: int = 0
    packs_held: int = 0  # unused or partly used packs kept: no repack, or `may_delete` refused
    packs_marked: int = 0
    pages_marked: int = 0
    bytes_marked: int = 0  # packs marked by this prune: a later prune deletes them
    packs_recovered: int = 0  # marked packs referenced again: back in the index
    pages_recovered: int = 0
    marks_pending: list[str] = field(default_factory=list)  # "mark: why it waits"
    dry_run: bool = False
    # Object Lock repositories: objects this prune deleted whose locked version stays stored
    # (and billed) until then, when the lifecycle rule reclaims it: name -> ISO time
    locked: dict[str, str] = field(default_factory=dict)


def exclusive_lock(repo: Repository) -> Lock:
    for lock in repo.held_locks:
        if lock.info.exclusive:
            return lock
    raise UserError("prune needs the exclusive repository lock")


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    repack: bool = True,
    may_delete: Callable[[str], bool] | None = None,
    grace: dt.timedelta = DEFAULT_GRACE,
) -> PruneReport:
    """Caller must hold the exclusive lock.

    Archive repositories pass `repack=False` (their packs cannot be read without a retrieval:
    partly used packs stay whole) and `may_delete` (a pack younger than its storage class's
    minimum duration stays unless early deletion is allowed)."""
    own = exclusive_lock(repo)
    report = PruneReport(dry_run=dry_run)
    index = repo.load_index(refresh=True)
    marks = list_marks(repo)
    marked = repo.marked_index(refresh=True)
    _rps, used_pages, used_blobs = referenced(repo)

    # 1. what is referenced but only marked comes back; what is in neither is damage
    recovered: set[str] = set()
    missing = []
    for bid in used_blobs:
        if bid in index.blobs:
            continue
        loc = marked.blobs.get(bid)
        if loc is None:
            missing.append(bid)
        else:
            recovered.add(loc.pack_id)
    if missing:
        raise CorruptObjectError(
            f"{len(missing)} referenced blobs are in no index (e.g. {missing[0].hex()}): "
            "refusing to prune a damaged repository; run `ec2backup repo check`"
        )
    present = repo.list_packs()
    # each used blob is kept exactly once: in the pack the index resolves it to
    keep_in: dict[str, list[bytes]] = {}
    for bid in used_blobs:
        loc = index.blobs.get(bid)
        if loc is not None:
            keep_in.setdefault(loc.pack_id, []).append(bid)
    for pid in [*keep_in, *recovered]:
        if pid not in present:
            raise CorruptObjectError(
                f"object {data_name(pid)} holds referenced blobs but is missing: "
                "refusing to prune; run `ec2backup repo check`"
            )
    pages_back = {p for m in marks for p in m.mark.pages if p in used_pages}
    report.packs_recovered, report.pages_recovered = len(recovered), len(pages_back)

    # marks whose contents may go now (5), and those still waiting
    lock_objects = list_locks(repo)
    now = next((lk.modified for lk in lock_objects if lk.name == own.name), None)
    if now is None:
        raise UserError(f"prune's own lock {own.name} is gone: stopping")
    live = {lk.name: lk.modified for lk in lock_objects}
    ready: list[MarkObject] = []
    waiting: list[MarkObject] = []
    for m in marks:
        why = m.ready(now, grace, live)
        (waiting if why else ready).append(m)
        if why:
            report.marks_pending.append(f"{m.name}: {why}")
    # (a pack or page also named by a waiting mark, after a crash between two prunes' steps,
    # waits for that mark too)
    still_marked = {p for m in waiting for p in m.mark.packs}
    still_marked_pages = {p for m in waiting for p in m.mark.pages}
    doomed_packs = sorted(
        {
            p
            for m in ready
            for p in m.mark.packs
            if p in present
            and p not in index.packs
            and p not in recovered
            and p not in still_marked
        }
    )
    doomed_pages = sorted(
        {
            p
            for m in ready
            for p in m.mark.pages
            if p not in used_pages and p not in still_marked_pages
        }
    )

    # what this prune marks
    keep_ids: list[str] = []  # ids only: their entries are read back when the index is written
    to_repack: list[tuple[IndexPack, set[bytes]]] = []
    unused: list[IndexPack] = []
    for pid in index.packs:
        kept = set(keep_in.get(pid, ()))
        n_blobs = index.pack_blob_count(pid)
        deletable = may_delete is None or pid not in present or may_delete(pid)
        if len(kept) == n_blobs or (kept and not repack) or not deletable:
            keep_ids.append(pid)
            report.blobs_kept += n_blobs
            if len(kept) < n_blobs:
                report.packs_held += 1
        elif not kept:
            unused.append(index.pack(pid))
            report.blobs_removed += n_blobs
        else:
            to_repack.append((index.pack(pid), kept))
            report.blobs_kept += len(kept)
            report.blobs_removed += n_blobs - len(kept)
    unindexed = [
        p
        for p in present
        if p not in index.packs
        and p not in recovered
        and p not in still_marked
        and p not in doomed_packs
        and (may_delete is None or may_delete(p))
    ]
    to_mark = [ip for ip in unused if ip.id in present] + [ip for ip, _ in to_repack]
    mark_ids = [ip.id for ip in to_mark] + unindexed
    all_pages = {name.rsplit("/", 1)[1]: name for name, _ in repo.backend.list("maps/")}
    new_dead_pages = [
        p
        for p in all_pages
        if p not in used_pages and p not in still_marked_pages and p not in doomed_pages
    ]
    report.packs_marked, report.pages_marked = len(mark_ids), len(new_dead_pages)
    report.bytes_marked = sum(present[p] for p in mark_ids)
    report.bytes_freed = sum(present[p] for p in doomed_packs)
    if dry_run:
        report.packs_deleted, report.pages_deleted = len(doomed_packs), len(doomed_pages)
        return report

    # 2. repack
    new_packs: list[IndexPack] = []
    codec = BlobCodec(repo.data_key, repo.config.compression_level)
    builder = PackBuilder()

    def flush() -> None:
        nonlocal builder
        if not builder.entries:
            return
        pack_id, buf, entries = builder.finish(repo.meta)
        repo.backend.create(data_name(pack_id), buf)
        new_packs.append(index_pack(pack_id, builder.size, entries))
        builder = PackBuilder()

    for ipack, kept in to_repack:
        name = data_name(ipack.id)
        data = repo.backend.get(name)
        if crypto.content_hash(data).hex() != ipack.id:
            raise CorruptObjectError(f"object {name} is corrupt: content hash does not match name")
        for b in ipack.blobs:
            bid = bytes.fromhex(b.id)
            if bid not in kept:
                continue
            kept.discard(bid)  # a pack could list a blob twice; keep one copy
            ct = data[b.offset : b.offset + b.length]
            try:
                codec.decode(bid, ct, b.compression, b.raw_length)  # authenticate before copying
            except Exception as exc:
                raise CorruptObjectError(f"object {name} is corrupt: blob {b.id[:16]}") from exc
            builder.add(bid, ct, b.compression, b.raw_length)
            if len(builder) >= repo.config.pack_size:
                flush()
        if progress is not None:
            progress(ipack.size)
    flush()
    report.packs_written = len(new_packs)

    # 3. mark, 4. new index, drop old index files, 5. delete: each only while our exclusive
    # lock is still ours (a holder that lost it would act under a backup)
    repo.check_locks()
    others = {
        lk.name: lk.modified
        for lk in lock_objects
        if lk.name != own.name and not (lk.info and lk.info.purpose == PROBE_PURPOSE)
    }
    if mark_ids or new_dead_pages:
        save_mark(repo, mark_ids, to_mark, new_dead_pages, others)
    old_index_ids = list(index.files)
    # one chunk of packs materialized at a time: the kept ones can be most of a large index
    sources = [(pid, index) for pid in keep_ids] + [(pid, marked) for pid in sorted(recovered)]
    written_index: list[str] = []
    for chunk in iter_chunks(sources, PACKS_PER_INDEX):
        written_index.append(
            repo.save_index([src.pack(pid) for pid, src in chunk], supersedes=old_index_ids)
        )
    for chunk in iter_chunks(new_packs, PACKS_PER_INDEX):
        written_index.append(repo.save_index(chunk, supersedes=old_index_ids))
    if objectlock.enabled(repo):
        now = dt.datetime.now(dt.UTC)
        # what this prune wrote holds what protected restore points need: lock it first
        objectlock.relock(
            repo,
            [repo.object_name("index", oid) for oid in written_index]
            + [data_name(p.id) for p in new_packs],
            now,
        )
        doomed_names = [repo.object_name("index", oid) for oid in old_index_ids]
        doomed_names += [data_name(pid) for pid in doomed_packs]
        doomed_names += [all_pages[page] for page in doomed_pages if page in all_pages]
        report.locked = {
            name: until.isoformat(timespec="seconds")
            for name, until in sorted(objectlock.locked_now(repo, doomed_names, now).items())
        }
    for oid in old_index_ids:
        repo.backend.delete(repo.object_name("index", oid))
    report.index_files_replaced = len(old_index_ids)
    for m in waiting:  # items recovered from a waiting mark leave it (its grace restarts)
        _drop_items(repo, m, recovered, pages_back)
    repo.check_locks()
    for pid in doomed_packs:
        repo.backend.delete(data_name(pid))
        report.packs_deleted += 1
    for page in doomed_pages:
        if page in all_pages:
            repo.backend.delete(all_pages[page])
            report.pages_deleted += 1
    for m in ready:
        repo.backend.delete(m.name)
    repo.load_index(refresh=True)
    return report


def _drop_items(repo: Repository, m: MarkObject, packs: set[str], pages: set[str]) -> None:
    """Rewrite a mark without the packs and pages recovered from it."""
    if not packs.intersection(m.mark.packs) and not pages.intersection(m.mark.pages):
        return
    keep = [p for p in m.mark.packs if p not in packs]
    indexed = [ip for ip in m.table.to_file().packs if ip.id not in packs]
    keep_pages = [p for p in m.mark.pages if p not in pages]
    if keep or keep_pages:
        save_mark(repo, keep, indexed, keep_pages, m.mark.locks)
    repo.backend.delete(m.name)


@dataclass
class RepoStats:
    restore_points: int
    volumes: int
    logical_bytes: int  # sum of volume sizes over all restore points
    allocated_bytes: int  # sum of non-zero blocks over all restore points
    unique_blobs: int
    unique_raw_bytes: int  # plaintext of distinct referenced blobs
    stored_bytes: int  # every object in the repository

    @property
    def dedup_ratio(self) -> float:
        """allocated / stored: the effect of dedup and compression together."""
        return self.allocated_bytes / self.stored_bytes if self.stored_bytes else 0.0


def stats(repo: Repository) -> RepoStats:
    index = repo.load_index()
    rps, _pages, blobs = referenced(repo, include_checkpoints=False)
    vols = [v for rp in rps.values() for v in rp.volumes]
    raw = 0
    for b in blobs:
        loc = index.blobs.get(b) or repo.locate(b)  # a marked pack not recovered yet
        if loc is None:
            raise UserError(f"blob {b.hex()} is in no index: run `ec2backup repo check`")
        raw += loc.raw_length
    stored = sum(size for _name, size in repo.backend.list(""))
    return RepoStats(
        restore_points=len(rps),
        volumes=len(vols),
        logical_bytes=sum(v.size for v in vols),
        allocated_bytes=sum(v.stats.blocks_allocated * v.block_size for v in vols),
        unique_blobs=len(blobs),
        unique_raw_bytes=raw,
        stored_bytes=stored,
    )

"""`repo prune` (remove data no restore point references) and `repo stats`.

Prune runs under the exclusive lock, so no backup is writing. It is ordered so that a crash at
any step leaves a valid repository:
  1. compute what restore points and checkpoints reference (abort on any unreadable object);
  2. repack the still-used blobs of partly used packs into new packs (ciphertext copied as is,
     after authenticating it);
  3. write new index files describing every kept and new pack;
  4. delete the old index files (now superseded);
  5. delete packs that are unused, repacked, or in no index, then unreferenced map pages.
A crash after 3 leaves duplicate index entries; after 4, unindexed packs: both harmless and
cleaned up by the next prune.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ec2backup import crypto
from ec2backup.errors import UserError
from ec2backup.repository.check import referenced
from ec2backup.repository.index import IndexPack, index_pack
from ec2backup.repository.pack import BlobCodec, PackBuilder
from ec2backup.repository.repo import CorruptObjectError, Repository, data_name, iter_chunks

# Packs per index file written by prune: keeps each index object a few MB at most.
PACKS_PER_INDEX = 2000


@dataclass
class PruneReport:
    packs_deleted: int = 0
    packs_written: int = 0
    blobs_removed: int = 0
    blobs_kept: int = 0
    bytes_freed: int = 0
    pages_deleted: int = 0
    index_files_replaced: int = 0
    packs_held: int = 0  # unused or partly used packs kept: no repack, or `may_delete` refused
    dry_run: bool = False


def prune(
    repo: Repository,
    *,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
    repack: bool = True,
    may_delete: Callable[[str], bool] | None = None,
) -> PruneReport:
    """Caller must hold the exclusive lock.

    Archive repositories pass `repack=False` (their packs cannot be read without a retrieval:
    partly used packs stay whole) and `may_delete` (a pack younger than its storage class's
    minimum duration stays unless early deletion is allowed)."""
    report = PruneReport(dry_run=dry_run)
    index = repo.load_index(refresh=True)
    _rps, used_pages, used_blobs = referenced(repo)
    missing = [b for b in used_blobs if b not in index.blobs]
    if missing:
        raise CorruptObjectError(
            f"{len(missing)} referenced blobs are in no index (e.g. {missing[0].hex()}): "
            "refusing to prune a damaged repository; run `ec2backup repo check`"
        )
    present = repo.list_packs()
    # each used blob is kept exactly once: in the pack the index resolves it to
    keep_in: dict[str, list[bytes]] = {}
    for bid in used_blobs:
        keep_in.setdefault(index.blobs[bid].pack_id, []).append(bid)
    for pid in keep_in:
        if pid not in present:
            raise CorruptObjectError(
                f"object {data_name(pid)} holds referenced blobs but is missing: "
                "refusing to prune; run `ec2backup repo check`"
            )

    keep_packs: list[IndexPack] = []
    to_repack: list[tuple[IndexPack, set[bytes]]] = []
    delete: list[str] = []
    for pid, ipack in index.packs.items():
        kept = set(keep_in.get(pid, ()))
        deletable = may_delete is None or pid not in present or may_delete(pid)
        if len(kept) == len(ipack.blobs) or (kept and not repack) or not deletable:
            keep_packs.append(ipack)
            report.blobs_kept += len(ipack.blobs)
            if len(kept) < len(ipack.blobs):
                report.packs_held += 1
        elif not kept:
            if pid in present:
                delete.append(pid)
            report.blobs_removed += len(ipack.blobs)
        else:
            to_repack.append((ipack, kept))
            report.blobs_kept += len(kept)
            report.blobs_removed += len(ipack.blobs) - len(kept)
    unindexed = [
        p for p in present if p not in index.packs and (may_delete is None or may_delete(p))
    ]
    report.bytes_freed = sum(present[p] for p in delete + unindexed)
    report.bytes_freed += sum(ip.size for ip, _ in to_repack)

    all_pages = {name.rsplit("/", 1)[1]: name for name, _ in repo.backend.list("maps/")}
    dead_pages = [name for pid, name in all_pages.items() if pid not in used_pages]
    report.pages_deleted = len(dead_pages)
    if dry_run:
        report.packs_deleted = len(delete) + len(unindexed) + len(to_repack)
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
        report.bytes_freed -= builder.size
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

    # 3. new index, 4. drop old index files, 5. delete packs and pages: only while our
    # exclusive lock is still ours (a holder that lost it would delete under a backup)
    repo.check_locks()
    old_index_ids = list(index.files)
    final = keep_packs + new_packs
    for chunk in iter_chunks(final, PACKS_PER_INDEX):
        repo.save_index(chunk, supersedes=old_index_ids)
    for oid in old_index_ids:
        repo.backend.delete(repo.object_name("index", oid))
    report.index_files_replaced = len(old_index_ids)
    for pid in delete + unindexed + [ip.id for ip, _ in to_repack]:
        repo.backend.delete(data_name(pid))
        report.packs_deleted += 1
    for name in dead_pages:
        repo.backend.delete(name)
    repo.load_index(refresh=True)
    return report


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
        loc = index.blobs.get(b)
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

"""Crash repair: packs uploaded but never indexed (a writer killed between a pack's PUT and its
index file) are found by listing data/ and adopted from their own encrypted headers."""

from __future__ import annotations

import logging

from ec2backup.errors import UserError
from ec2backup.repository.index import IndexPack, index_pack
from ec2backup.repository.pack import PackEntry
from ec2backup.repository.repo import Repository, data_name

log = logging.getLogger(__name__)


def recover_unindexed_packs(repo: Repository) -> int:
    """Index packs that exist but no index names (left by a crashed backup), so a rerun reuses
    them instead of uploading the same blobs again. Returns the number of packs adopted."""
    index = repo.load_index(refresh=True)
    present = repo.list_packs()
    try:
        marked = repo.marked_index()
    except UserError as exc:  # adoption only saves uploads: a damaged mark must not stop backups
        log.warning("not adopting unindexed packs: %s", exc)
        return 0
    # a pack a prune marked for deletion is no orphan: adopting it would undo the prune (and
    # keep it forever, as an indexed pack is never deleted by the mark)
    orphans = [p for p in present if p not in index.packs and p not in marked.packs]
    if not orphans:
        return 0
    adopted: list[IndexPack] = []
    for pack_id in orphans:
        try:
            entries = read_pack_header(repo, pack_id, present[pack_id])
        except Exception:
            continue  # unreadable: leave it for check to report and prune to delete
        adopted.append(index_pack(pack_id, present[pack_id], entries))
    if adopted:
        repo.save_index(adopted)
    return len(adopted)


def read_pack_header(repo: Repository, pack_id: str, size: int) -> list[PackEntry]:
    """Entries of a pack from its trailer (two ranged reads)."""
    from ec2backup.repository.pack import TRAILER_SIZE, decode_header, trailer_length

    name = data_name(pack_id)
    tail = repo.backend.get_range(name, size - TRAILER_SIZE, TRAILER_SIZE)
    hlen = trailer_length(tail)
    if hlen + TRAILER_SIZE > size:
        raise ValueError("pack header length out of range")
    header = repo.backend.get_range(name, size - TRAILER_SIZE - hlen, hlen)
    return decode_header(header, repo.meta)

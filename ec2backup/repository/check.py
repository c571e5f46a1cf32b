"""`repo check`: verify structure (and optionally data) of a repository, naming bad objects."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ec2backup import crypto
from ec2backup.errors import UserError
from ec2backup.repository.blockmap import ID_SIZE, PAGE_BLOCKS, is_blob
from ec2backup.repository.index import Index, IndexPack
from ec2backup.repository.pack import BlobCodec, parse_pack
from ec2backup.repository.repo import Repository, data_name
from ec2backup.repository.restorepoint import RestorePoint
from ec2backup.repository.writer import Checkpoint


@dataclass
class CheckReport:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    restore_points: int = 0
    index_files: int = 0
    packs: int = 0
    packs_read: int = 0
    pages: int = 0
    blobs_referenced: int = 0
    blobs_verified: int = 0
    marked_packs: int = 0  # packs a prune marked for deletion (deleted by a later prune)

    @property
    def ok(self) -> bool:
        return not self.errors


def _err(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def referenced(
    repo: Repository, report: CheckReport | None = None, include_checkpoints: bool = True
) -> tuple[dict[str, RestorePoint], set[str], set[bytes]]:
    """Restore points, map page ids and blob ids reachable from restore points (+checkpoints).

    With a report, problems are recorded there; without one, they raise (prune must not act on
    a repository it cannot fully read)."""
    rps: dict[str, RestorePoint] = {}
    roots: list[tuple[str, list[str | None]]] = []
    for oid in repo.list_ids("restorepoint"):
        try:
            rp = repo.load_restore_point_by_id(oid)
        except UserError as exc:
            if report is None:
                raise
            report.errors.append(_err(exc))
            continue
        rps[oid] = rp
        roots.extend((f"restorepoints/{oid}", v.pages) for v in rp.volumes)
    if include_checkpoints:
        for name, _ in repo.backend.list("checkpoints/"):
            try:
                cp = Checkpoint.model_validate_json(repo.load_named(name))
            except Exception as exc:
                if report is None:
                    # Prune: an unfinished backup's checkpoint names pages and blobs that no
                    # restore point does yet; skipping it would delete them under the backup.
                    raise UserError(
                        f"{name}: unreadable checkpoint ({_err(exc)}): refusing to prune "
                        "(what it references could be deleted under its backup)"
                    ) from exc
                report.warnings.append(f"{name}: unreadable checkpoint ({_err(exc)})")
                continue
            roots.append((name, cp.pages))
            if cp.parent_pages:
                roots.append((name, cp.parent_pages))
    pages: set[str] = set()
    blobs: set[bytes] = set()
    for owner, page_ids in roots:
        for pid in page_ids:
            if pid is None or pid in pages:
                continue
            try:
                page = repo.load_page(pid)
            except UserError as exc:
                if report is None:
                    raise
                report.errors.append(f"{_err(exc)} (referenced by {owner})")
                continue
            pages.add(pid)
            for slot in range(PAGE_BLOCKS):
                bid = page[slot * ID_SIZE : (slot + 1) * ID_SIZE]
                if is_blob(bid):
                    blobs.add(bid)
    return rps, pages, blobs


def load_index_checked(repo: Repository, report: CheckReport) -> Index:
    def damaged(_oid: str, exc: UserError) -> None:
        report.errors.append(_err(exc))

    return Index.build(repo.iter_index_tables(on_error=damaged))


def verify_pack(repo: Repository, codec: BlobCodec, ipack: IndexPack) -> list[str]:
    """Read a whole pack: hash == name, header == index, every blob decrypts to its id."""
    name = data_name(ipack.id)
    try:
        data = repo.backend.get(name)
    except UserError as exc:
        return [_err(exc)]
    if crypto.content_hash(data).hex() != ipack.id:
        return [f"object {name} is corrupt: content hash does not match name"]
    try:
        entries = {e.blob_id: e for e in parse_pack(data, repo.meta)}
    except Exception as exc:
        return [f"object {name} is corrupt: header: {_err(exc)}"]
    errors = []
    view = memoryview(data)
    for b in ipack.blobs:
        bid = bytes.fromhex(b.id)
        e = entries.get(bid)
        if e is None or (e.offset, e.length, e.raw_length) != (b.offset, b.length, b.raw_length):
            errors.append(f"object {name} is corrupt: blob {b.id[:16]} differs from the index")
            continue
        try:
            plain = codec.decode(
                bid, view[e.offset : e.offset + e.length], e.compression, e.raw_length
            )
        except Exception as exc:
            errors.append(f"object {name} is corrupt: blob {b.id[:16]}: {_err(exc)}")
            continue
        if crypto.keyed_hash(repo.id_key, plain) != bid:
            errors.append(f"object {name} is corrupt: blob {b.id[:16]} content does not match id")
    return errors


def check(
    repo: Repository,
    *,
    read_data: bool = False,
    subset_percent: float | None = None,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> CheckReport:
    report = CheckReport()
    index = load_index_checked(repo, report)
    report.index_files = len(index.files)
    present = repo.list_packs()
    report.packs = len(present)
    for pid in index.packs:
        name = data_name(pid)
        size = index.pack_size(pid)
        if pid not in present:
            report.errors.append(f"object {name} is missing (named by the index)")
        elif present[pid] != size:
            report.errors.append(
                f"object {name} is corrupt: size {present[pid]} != {size} in the index"
            )
    try:
        marked = repo.marked_index(refresh=True)
    except UserError as exc:
        report.errors.append(_err(exc))
        marked = Index.build([])
    report.marked_packs = marked.pack_count()
    for pid in present:
        if pid not in index.packs and pid not in marked.packs:
            report.warnings.append(
                f"{data_name(pid)}: not in any index (left by an interrupted backup; "
                "a rerun adopts it, prune marks it for deletion)"
            )
    rps, pages, blobs = referenced(repo, report)
    report.restore_points = len(rps)
    report.pages = len(pages)
    report.blobs_referenced = len(blobs)
    unindexed = [b for b in blobs if b not in index.blobs]
    missing = []
    for b in unindexed:
        loc = marked.blobs.get(b)
        if loc is None:
            missing.append(b)
        elif loc.pack_id not in present:
            report.errors.append(
                f"blob {b.hex()} is referenced but its marked pack {data_name(loc.pack_id)} "
                "is missing"
            )
        else:
            report.warnings.append(
                f"blob {b.hex()} is referenced but in a pack marked for deletion "
                f"({data_name(loc.pack_id)}): the next prune puts it back into the index"
            )
    for b in missing[:20]:
        report.errors.append(f"blob {b.hex()} is referenced by a block map but not in any index")
    if len(missing) > 20:
        report.errors.append(f"... and {len(missing) - 20} more missing blobs")

    if read_data or subset_percent is not None:
        to_read = [p for p in index.packs if p in present]
        if subset_percent is not None and not read_data:
            if not 0 < subset_percent <= 100:
                raise UserError("--read-data-subset must be a percentage in (0, 100]")
            k = math.ceil(len(to_read) * subset_percent / 100)
            to_read = random.sample(to_read, k)
        if on_start is not None:
            on_start(sum(index.pack_size(p) for p in to_read))
        codec = BlobCodec(repo.data_key, repo.config.compression_level)

        def verify(pid: str) -> tuple[IndexPack, list[str]]:
            ipack = index.pack(pid)  # one pack's entries in memory at a time (per thread)
            return ipack, verify_pack(repo, codec, ipack)

        with ThreadPoolExecutor(max_workers=2) as pool:
            for ipack, errs in pool.map(verify, to_read):
                report.errors.extend(errs)
                report.packs_read += 1
                report.blobs_verified += len(ipack.blobs)
                if progress is not None:
                    progress(ipack.size)
    return report

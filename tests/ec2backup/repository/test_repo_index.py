"""The index: binary index files, the compact table, lookups that never answer wrong."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from repo_helpers import rewrite_config

from ec2backup.repository.index import (
    FILE_BLOB,
    FILE_PACK,
    INDEX_MAGIC,
    Index,
    IndexBlob,
    IndexFile,
    IndexPack,
    IndexTable,
)
from ec2backup.repository.repo import CorruptObjectError, Repository

PASSWORD = b"index-test-password"


def _blob(bid: bytes, offset: int, length: int = 100) -> IndexBlob:
    return IndexBlob(id=bid.hex(), offset=offset, length=length, raw_length=524288, compression=1)


def _pack(pid: int, *bids: bytes) -> IndexPack:
    return IndexPack(
        id=pid.to_bytes(32, "big").hex(),
        size=1000 + pid,
        blobs=[_blob(b, 100 * i) for i, b in enumerate(bids)],
    )


def _id(n: int) -> bytes:
    return hashlib.sha256(n.to_bytes(8, "big")).digest()


def test_binary_table_round_trips_and_rejects_damage() -> None:
    a, b, c = _id(1), _id(2), _id(3)
    table = IndexTable.from_packs([_pack(1, a, b), _pack(2, c)], supersedes=["ab" * 32])
    raw = table.encode()
    assert raw.startswith(INDEX_MAGIC)
    # 20-byte header, one superseded id, 48 bytes per pack, 52 per blob
    assert len(raw) == 20 + 32 + 2 * FILE_PACK.itemsize + 3 * FILE_BLOB.itemsize
    doc = IndexTable.decode(raw).to_file()
    assert doc.supersedes == ["ab" * 32]
    assert [[x.id for x in p.blobs] for p in doc.packs] == [[a.hex(), b.hex()], [c.hex()]]
    assert doc.packs[0].blobs[1].offset == 100 and doc.packs[1].size == 1002
    for bad, why in [
        (raw[:10], "shorter"),
        (b"XXXX" + raw[4:], "magic"),
        (raw[:-1], "length"),
        (raw + b"\0" * FILE_BLOB.itemsize, "length"),
    ]:
        with pytest.raises(ValueError, match=why):
            IndexTable.decode(bad)


def test_lookups_are_exact_even_when_keys_collide() -> None:
    """Keys hold 32 bits of the id: ids sharing them must still resolve to their own entry."""
    same = b"\x12\x34\x56\x78"
    ids = [same + os.urandom(28) for _ in range(50)] + [_id(i) for i in range(1000)]
    packs = [_pack(i, *ids[i * 10 : (i + 1) * 10]) for i in range(len(ids) // 10)]
    index = Index.build([("f1", IndexTable.from_packs(packs))])
    for i, bid in enumerate(ids):
        loc = index.get(bid)
        assert loc is not None and loc.pack_id == packs[i // 10].id
        assert loc.offset == 100 * (i % 10)
    for _ in range(200):
        assert (same + os.urandom(28)) not in index  # same key prefix, different id
        assert os.urandom(32) not in index
    assert b"short" not in index.blobs and index.get(b"") is None
    assert len(index) == len(ids) and len(index.packs) == len(packs)
    assert set(index.blobs) == set(ids)


def test_first_loaded_copy_wins_and_repeated_packs_count_once() -> None:
    a, b = _id(1), _id(2)
    first = IndexTable.from_packs([_pack(1, a, b)])
    # the same pack again (a crash between prune's index writes and deletes), and b in a
    # second pack (two concurrent backups stored the same block)
    second = IndexTable.from_packs([_pack(1, a, b), _pack(2, b)])
    index = Index.build([("f1", first), ("f2", second)])
    assert index.files == ["f1", "f2"]
    assert len(index.packs) == 2 and len(index) == 3
    loc = index.get(b)
    assert loc is not None and loc.pack_id == _pack(1).id
    assert [x.id for x in index.packs[_pack(2).id].blobs] == [b.hex()]
    assert index.pack_size(_pack(2).id) == 1002
    assert _pack(3).id not in index.packs and "not hex" not in index.packs


def test_packs_added_after_the_load_are_found_and_merged() -> None:
    index = Index.build([("f0", IndexTable.from_packs([_pack(0, _id(0))]))])
    added: list[bytes] = []
    for n in range(1, 40):  # overlay segments of growing count merge as they go
        ids = [_id(n * 100 + k) for k in range(n)]
        index.add_table(f"f{n}", IndexTable.from_packs([_pack(n, *ids)]))
        added += ids
        assert len(index._segments) <= 1 + 2 * n.bit_length()
    for bid in added:
        assert bid in index
    index.add_pack(_pack(99, _id(99)))
    assert _id(99) in index and len(index.files) == 40  # add_pack names no index file
    assert index.get(_id(0)) is not None
    assert all(bid in index.blobs for bid in added)


def test_memory_per_blob_stays_a_few_bytes() -> None:
    """The old index held ~1.5 KB per blob (a dict entry and a pydantic model); this one holds
    an 8-byte key per blob in memory and the entries in its scratch file."""
    n_packs, per_pack = 2000, 100
    rng = np.random.default_rng(7)
    tables = []
    for f in range(20):
        packs = np.zeros(n_packs // 20, FILE_PACK)
        packs["id"] = [os.urandom(32) for _ in range(len(packs))]
        packs["size"], packs["count"] = 16 << 20, per_pack
        blobs = np.zeros(len(packs) * per_pack, FILE_BLOB)
        blobs["id"] = [rng.bytes(32) for _ in range(len(blobs))]
        blobs["length"], blobs["raw_length"] = 300_000, 524288
        tables.append((f"f{f}", IndexTable(packs, blobs)))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = Index.build(tables)
    retained = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    n = n_packs * per_pack
    assert len(index) == n
    assert retained / n < 24, f"{retained / n:.1f} bytes per blob"
    assert bytes(tables[3][1].blobs["id"][17]) in index


def _repo(tmp_path: Path, version: int | None = None) -> Repository:
    url = str(tmp_path / "r")
    repo = Repository.create(url, PASSWORD)
    if version is not None:
        rewrite_config(repo, version=version)
        repo = Repository.open(url, PASSWORD)
    return repo


def test_format_3_writes_binary_index_files_and_reads_json_ones(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    assert repo.binary_index
    a, b = _id(1), _id(2)
    oid = repo.save_index([_pack(1, a)])
    assert repo.load_object("index", oid).startswith(INDEX_MAGIC)
    # a JSON file (written by an older program, before the upgrade) is read alongside
    legacy = IndexFile(packs=[_pack(2, b)]).model_dump_json().encode()
    repo.save_object("index", legacy)
    index = repo.load_index(refresh=True)
    assert a in index and b in index and len(index.files) == 2
    assert repo.load_index_file(oid).packs[0].blobs[0].id == a.hex()


def test_format_2_keeps_writing_json_index_files(tmp_path: Path) -> None:
    repo = _repo(tmp_path, version=2)
    assert not repo.binary_index
    oid = repo.save_index([_pack(1, _id(1))])
    raw = repo.load_object("index", oid)
    assert IndexFile.model_validate_json(raw).packs[0].id == _pack(1).id
    assert _id(1) in repo.load_index(refresh=True)


def test_a_damaged_binary_index_file_is_named(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    good = IndexTable.from_packs([_pack(1, _id(1))]).encode()
    oid = repo.save_object("index", good[:-3])
    with pytest.raises(CorruptObjectError, match=f"index/{oid} is corrupt"):
        repo.load_index(refresh=True)

"""The index: which pack holds which blob, at which offset.

Index files (`index/<id>`) each describe a set of packs; the repository index is their union.
A blob may appear in several packs (two concurrent backups stored the same new block); any copy
will do, and every reader here resolves a blob to the copy loaded first.

Two encodings of an index file exist (docs/repository-format.md §5.3): JSON (index version 1,
written in repositories of format 1 and 2) and a binary table (index version 2, format 3 and
later). Both are read everywhere.

In memory, `Index` costs 8 bytes per blob, whatever the repository's size: restic and kopia
hold every entry as objects and run out of memory at a few million blobs (restic#3844,
kopia#1308), and so did this module (about 1.5 KB per blob). The entries themselves (56 bytes
each) go to an unnamed local scratch file; memory holds one sorted array of 64-bit keys, each
the first 32 bits of a blob id above the entry's position in that file. A lookup binary-searches
the keys and confirms every candidate against the full id read from the file (one `pread`), so
a key collision costs a read, never a wrong answer.
"""

from __future__ import annotations

import os
import struct
import tempfile
import threading
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, Field

from ec2backup.repository.pack import PackEntry

INDEX_VERSION = 1  # JSON
BINARY_INDEX_VERSION = 2
INDEX_MAGIC = b"E2BI"
# magic, version, 3 reserved bytes, then counts of superseded files, packs and blobs
_TABLE_HEADER = struct.Struct("<4sB3xIII")
ID_SIZE = 32
FILE_PACK = np.dtype([("id", "V32"), ("size", "<u8"), ("count", "<u4"), ("reserved", "<u4")])
_BLOB_FIELDS: list[tuple[str, str]] = [
    ("id", "V32"),
    ("offset", "<u8"),
    ("length", "<u4"),
    ("raw_length", "<u4"),
    ("type", "u1"),
    ("compression", "u1"),
    ("reserved", "<u2"),
]
BLOB_FIELD_NAMES = tuple(name for name, _ in _BLOB_FIELDS)
FILE_BLOB = np.dtype(_BLOB_FIELDS)  # 52 bytes
# An entry of the scratch file: a file blob entry plus the ordinal of its pack (56 bytes).
ENTRY = np.dtype([*_BLOB_FIELDS, ("pack", "<u4")])
ENTRY_SIZE = ENTRY.itemsize
# A key is (first 32 bits of the blob id) << 32 | position in the scratch file, so one index
# holds at most 2^32 entries (2 PiB of unique 512 KiB blocks) and an absent blob collides with
# a present key with probability n / 2^32 per lookup (one extra read, about 0.2% at 10 million).
POSITION_BITS = 32
POSITION_MASK = (1 << POSITION_BITS) - 1
MAX_ENTRIES = 1 << POSITION_BITS
# Overlay segments (packs indexed after the initial load) merge when a newer one reaches half
# the size of the one before it: a lookup searches O(log n) segments.
MERGE_RATIO = 2
# Where the scratch file goes (default: the system temporary directory).
INDEX_DIR_ENV = "EC2BACKUP_INDEX_DIR"


class IndexBlob(BaseModel):
    id: str  # hex blob id
    type: int = 0
    offset: int
    length: int  # stored (ciphertext) length in the pack
    raw_length: int  # plaintext length
    compression: int


class IndexPack(BaseModel):
    id: str  # hex pack id (= content hash of the pack)
    size: int  # pack object size in bytes
    blobs: list[IndexBlob]


class IndexFile(BaseModel):
    """Version 1 (JSON) index file; also what `Repository.load_index_file` shows of any file."""

    version: int = INDEX_VERSION
    # Index files this one replaces (written by prune): a reader that sees both may ignore them.
    supersedes: list[str] = Field(default_factory=list)
    packs: list[IndexPack]


class BlobLoc(NamedTuple):
    pack_id: str
    offset: int
    length: int
    raw_length: int
    compression: int


def index_pack(pack_id: str, size: int, entries: Iterable[PackEntry]) -> IndexPack:
    return IndexPack(
        id=pack_id,
        size=size,
        blobs=[
            IndexBlob(
                id=e.blob_id.hex(),
                type=e.type,
                offset=e.offset,
                length=e.length,
                raw_length=e.raw_length,
                compression=e.compression,
            )
            for e in entries
        ],
    )


# ---- one index file as arrays -------------------------------------------------------------


@dataclass
class IndexTable:
    """One index file: packs in order, and their blobs (pack i's follow pack i-1's)."""

    packs: np.ndarray  # FILE_PACK
    blobs: np.ndarray  # FILE_BLOB
    supersedes: list[str] = field(default_factory=list)

    @classmethod
    def from_packs(cls, packs: Iterable[IndexPack], supersedes: Iterable[str] = ()) -> IndexTable:
        plist = list(packs)
        ptable = np.zeros(len(plist), FILE_PACK)
        rows: list[tuple[bytes, int, int, int, int, int, int]] = []
        for i, p in enumerate(plist):
            ptable[i] = (bytes.fromhex(p.id), p.size, len(p.blobs), 0)
            rows.extend(
                (bytes.fromhex(b.id), b.offset, b.length, b.raw_length, b.type, b.compression, 0)
                for b in p.blobs
            )
        return cls(ptable, np.array(rows, FILE_BLOB), list(supersedes))

    @classmethod
    def from_file(cls, doc: IndexFile) -> IndexTable:
        return cls.from_packs(doc.packs, doc.supersedes)

    def to_file(self) -> IndexFile:
        packs = []
        start = 0
        for p in self.packs:
            count = int(p["count"])
            packs.append(
                IndexPack(
                    id=bytes(p["id"]).hex(),
                    size=int(p["size"]),
                    blobs=[_index_blob(b) for b in self.blobs[start : start + count]],
                )
            )
            start += count
        return IndexFile(version=BINARY_INDEX_VERSION, supersedes=self.supersedes, packs=packs)

    def encode(self) -> bytes:
        """The binary form (index version 2)."""
        counts = (len(self.supersedes), len(self.packs), len(self.blobs))
        head = _TABLE_HEADER.pack(INDEX_MAGIC, BINARY_INDEX_VERSION, *counts)
        sup = b"".join(bytes.fromhex(s) for s in self.supersedes)
        return head + sup + self.packs.tobytes() + self.blobs.tobytes()

    @classmethod
    def decode(cls, payload: bytes) -> IndexTable:
        """Parse the binary form; ValueError names what is wrong."""
        if len(payload) < _TABLE_HEADER.size:
            raise ValueError("index table shorter than its header")
        magic, version, n_sup, n_packs, n_blobs = _TABLE_HEADER.unpack_from(payload)
        if magic != INDEX_MAGIC or version != BINARY_INDEX_VERSION:
            raise ValueError("bad index table magic/version")
        at = _TABLE_HEADER.size
        end_sup = at + n_sup * ID_SIZE
        end_packs = end_sup + n_packs * FILE_PACK.itemsize
        if len(payload) != end_packs + n_blobs * FILE_BLOB.itemsize:
            raise ValueError("index table length does not match its counts")
        sup = [payload[i : i + ID_SIZE].hex() for i in range(at, end_sup, ID_SIZE)]
        packs = np.frombuffer(payload, FILE_PACK, n_packs, end_sup)
        blobs = np.frombuffer(payload, FILE_BLOB, n_blobs, end_packs)
        if int(packs["count"].sum(dtype=np.uint64)) != n_blobs:
            raise ValueError("index table pack blob counts do not add up")
        return cls(packs, blobs, sup)


def _index_blob(row: np.void) -> IndexBlob:
    return IndexBlob(
        id=bytes(row["id"]).hex(),
        type=int(row["type"]),
        offset=int(row["offset"]),
        length=int(row["length"]),
        raw_length=int(row["raw_length"]),
        compression=int(row["compression"]),
    )


def _keys(ids: np.ndarray, first_position: int) -> np.ndarray:
    """Keys of entries with these ids (a V32 array) stored from `first_position` on."""
    prefix = np.ascontiguousarray(ids).view(np.uint8).reshape(-1, ID_SIZE)[:, :4].copy()
    keys = prefix.view(">u4").ravel().astype(np.uint64) << np.uint64(POSITION_BITS)
    keys |= np.arange(first_position, first_position + len(ids), dtype=np.uint64)
    return keys


def _join(parts: list[np.ndarray]) -> np.ndarray:
    """One array of the parts, each freed once copied: np.concatenate would hold all the parts
    and the result at once (twice the keys' memory at the peak)."""
    out = np.empty(sum(len(p) for p in parts), np.uint64)
    at = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[at : at + len(part)] = part
        at += len(part)
    return out


# ---- the union of index files -------------------------------------------------------------


class Index:
    """Union of index files: blob id -> location, plus per-pack bookkeeping.

    Lookups are thread-safe and may run while another thread adds files."""

    def __init__(self, scratch_dir: str | None = None) -> None:
        # unnamed (O_TMPFILE): gone when this index is, even if the process is killed
        self._scratch = tempfile.TemporaryFile(  # noqa: SIM115 - lives as long as the index
            prefix="ec2backup-index-", dir=scratch_dir or os.environ.get(INDEX_DIR_ENV) or None
        )
        self._fd = self._scratch.fileno()
        self._lock = threading.Lock()
        self._entries = 0  # entries in the scratch file
        self.files: list[str] = []  # index file ids, in load order
        self._pack_ord: dict[bytes, int] = {}
        self._pack_ids = bytearray()  # 32 bytes per pack ordinal
        self._pack_size = array("Q")
        self._pack_start = array("Q")  # first scratch entry of the pack
        self._pack_count = array("I")
        # Sorted key arrays, searched in order: the initial load, then overlays. Replaced, never
        # mutated, so a reader can take the list without a lock.
        self._segments: list[np.ndarray] = []
        self._base_segments = 0
        self.blobs = _BlobView(self)
        self.packs = _PackView(self)

    @classmethod
    def build(
        cls, tables: Iterable[tuple[str, IndexTable]], scratch_dir: str | None = None
    ) -> Index:
        """The index of these files, sorted once (how a repository's index is loaded)."""
        index = cls(scratch_dir)
        keys = _join([index._ingest(oid, table) for oid, table in tables])
        keys.sort()
        index._segments = [keys]
        index._base_segments = 1
        return index

    def close(self) -> None:
        self._scratch.close()

    def __len__(self) -> int:
        """Entries (a blob stored in two packs counts twice)."""
        return self._entries

    # ---- adding ----

    def _ingest(self, oid: str | None, table: IndexTable) -> np.ndarray:
        """Append the entries of the packs not known yet; their keys (unsorted)."""
        with self._lock:
            if oid is not None:
                self.files.append(oid)
            counts = table.packs["count"].astype(np.int64)
            starts = np.concatenate(([0], np.cumsum(counts)[:-1])) if len(counts) else counts
            keep = np.ones(len(table.blobs), bool)
            pack_of = np.empty(len(table.blobs), np.uint32)
            first = self._entries
            position = first
            for i, row in enumerate(table.packs):
                pid = bytes(row["id"])
                lo, n = int(starts[i]), int(counts[i])
                if pid in self._pack_ord:  # the same pack in two files: once is enough
                    keep[lo : lo + n] = False
                    continue
                ordinal = len(self._pack_size)
                self._pack_ord[pid] = ordinal
                self._pack_ids += pid
                self._pack_size.append(int(row["size"]))
                self._pack_start.append(position)
                self._pack_count.append(n)
                pack_of[lo : lo + n] = ordinal
                position += n
            kept = table.blobs[keep] if not keep.all() else table.blobs
            if position > MAX_ENTRIES:
                raise ValueError(f"an index holds at most {MAX_ENTRIES} entries")
            entries = np.empty(len(kept), ENTRY)
            for name in BLOB_FIELD_NAMES:
                entries[name] = kept[name]
            entries["pack"] = pack_of[keep]
            os.pwrite(self._fd, entries.tobytes(), first * ENTRY_SIZE)
            self._entries = position
            return _keys(entries["id"], first)

    def add_table(self, oid: str | None, table: IndexTable) -> None:
        """An index file written or found after the load (kept as an overlay segment)."""
        keys = self._ingest(oid, table)
        if not len(keys):
            return
        keys.sort()
        with self._lock:
            base = self._segments[: self._base_segments]
            overlay = [*self._segments[self._base_segments :], keys]
            while len(overlay) >= 2 and len(overlay[-2]) <= MERGE_RATIO * len(overlay[-1]):
                merged = np.concatenate(overlay[-2:])
                merged.sort(kind="stable")  # two sorted runs: a linear merge
                overlay[-2:] = [merged]
            self._segments = [*base, *overlay]

    def add_file(self, oid: str, doc: IndexFile) -> None:
        self.add_table(oid, IndexTable.from_file(doc))

    def add_pack(self, pack: IndexPack) -> None:
        """A pack known from elsewhere than an index file (e.g. adopted from its header)."""
        self.add_table(None, IndexTable.from_packs([pack]))

    # ---- blobs ----

    def _find(self, blob_id: bytes) -> np.void | None:
        if len(blob_id) != ID_SIZE:
            return None
        lo = int.from_bytes(blob_id[:4], "big") << POSITION_BITS
        hi = lo | POSITION_MASK
        for seg in self._segments:
            i = int(np.searchsorted(seg, np.uint64(lo)))  # a Python int would cast the array
            while i < len(seg):
                key = int(seg[i])
                if key > hi:
                    break
                raw = os.pread(self._fd, ENTRY_SIZE, (key & POSITION_MASK) * ENTRY_SIZE)
                if raw[:ID_SIZE] == blob_id:
                    entry: np.void = np.frombuffer(raw, ENTRY)[0]
                    return entry
                i += 1
        return None

    def __contains__(self, blob_id: bytes) -> bool:
        return self._find(blob_id) is not None

    def get(self, blob_id: bytes) -> BlobLoc | None:
        e = self._find(blob_id)
        if e is None:
            return None
        return BlobLoc(
            self.pack_id(int(e["pack"])),
            int(e["offset"]),
            int(e["length"]),
            int(e["raw_length"]),
            int(e["compression"]),
        )

    def _read_entries(self, first: int, count: int) -> np.ndarray:
        raw = os.pread(self._fd, count * ENTRY_SIZE, first * ENTRY_SIZE)
        return np.frombuffer(raw, ENTRY)

    def iter_entries(self, chunk: int = 65536) -> Iterator[np.ndarray]:
        """Every entry, in load order, a chunk at a time."""
        end = self._entries
        for first in range(0, end, chunk):
            yield self._read_entries(first, min(chunk, end - first))

    # ---- packs ----

    def pack_id(self, ordinal: int) -> str:
        return self._pack_ids[ordinal * ID_SIZE : (ordinal + 1) * ID_SIZE].hex()

    def _ordinal(self, pack_id: str) -> int | None:
        try:
            return self._pack_ord.get(bytes.fromhex(pack_id))
        except ValueError:
            return None

    def pack_size(self, pack_id: str) -> int:
        ordinal = self._ordinal(pack_id)
        if ordinal is None:
            raise KeyError(pack_id)
        return self._pack_size[ordinal]

    def pack_count(self) -> int:
        return len(self._pack_size)

    def pack_blob_count(self, pack_id: str) -> int:
        ordinal = self._ordinal(pack_id)
        if ordinal is None:
            raise KeyError(pack_id)
        return self._pack_count[ordinal]

    def pack(self, pack_id: str) -> IndexPack:
        """One pack with its blobs (read back from the scratch file)."""
        ordinal = self._ordinal(pack_id)
        if ordinal is None:
            raise KeyError(pack_id)
        rows = self._read_entries(self._pack_start[ordinal], self._pack_count[ordinal])
        return IndexPack(
            id=pack_id, size=self._pack_size[ordinal], blobs=[_index_blob(r) for r in rows]
        )


class _BlobView(Mapping[bytes, BlobLoc]):
    """`index.blobs`: blob id -> location. Iteration reads every entry (tests, small tools)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and blob_id in self._index

    def __getitem__(self, blob_id: bytes) -> BlobLoc:
        loc = self._index.get(blob_id)
        if loc is None:
            raise KeyError(blob_id.hex())
        return loc

    def get(self, blob_id: bytes, default: BlobLoc | None = None) -> BlobLoc | None:  # type: ignore[override]
        loc = self._index.get(blob_id)
        return default if loc is None else loc

    def __iter__(self) -> Iterator[bytes]:
        seen: set[bytes] = set()
        for chunk in self._index.iter_entries():
            for raw in chunk["id"]:
                bid = bytes(raw)
                if bid not in seen:
                    seen.add(bid)
                    yield bid

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _PackView(Mapping[str, IndexPack]):
    """`index.packs`: hex pack id -> pack with its blobs (materialized on access)."""

    def __init__(self, index: Index) -> None:
        self._index = index

    def __contains__(self, pack_id: object) -> bool:
        return isinstance(pack_id, str) and self._index._ordinal(pack_id) is not None

    def __getitem__(self, pack_id: str) -> IndexPack:
        return self._index.pack(pack_id)

    def __iter__(self) -> Iterator[str]:
        return (self._index.pack_id(i) for i in range(self._index.pack_count()))

    def __len__(self) -> int:
        return self._index.pack_count()

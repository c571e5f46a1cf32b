"""The index: which pack holds which blob, at which offset.

Index files are encrypted JSON documents (`index/<id>`), each describing a set of packs. Many
index files coexist; the in-memory `Index` is their union. A blob may appear in several packs
(two concurrent backups stored the same new block); any copy will do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

from pydantic import BaseModel, Field

from ec2backup.repository.pack import PackEntry

INDEX_VERSION = 1


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


class Index:
    """Union of index files: blob id -> location, plus per-pack bookkeeping."""

    def __init__(self) -> None:
        self.blobs: dict[bytes, BlobLoc] = {}
        self.packs: dict[str, IndexPack] = {}
        self.files: dict[str, IndexFile] = {}  # index file id -> contents

    def add_pack(self, pack: IndexPack) -> None:
        if pack.id in self.packs:
            return
        self.packs[pack.id] = pack
        for b in pack.blobs:
            bid = bytes.fromhex(b.id)
            if bid not in self.blobs:
                self.blobs[bid] = BlobLoc(pack.id, b.offset, b.length, b.raw_length, b.compression)

    def add_file(self, file_id: str, doc: IndexFile) -> None:
        self.files[file_id] = doc
        for p in doc.packs:
            self.add_pack(p)

    def __contains__(self, blob_id: bytes) -> bool:
        return blob_id in self.blobs

    def get(self, blob_id: bytes) -> BlobLoc | None:
        return self.blobs.get(blob_id)

"""Blob encoding and pack files.

A blob is one 512 KiB block: zstd-compressed (or raw when that does not shrink it), then
sealed with AES-256-GCM under the data key with the blob id (and compression flag) as
associated data, so a blob cannot be passed off as another one.

Pack layout (see docs/repository-format.md):

    pack      = blob* header_ct header_len
    blob      = nonce(12) || AES-GCM(data_key, encoded, aad = blob_id || compression)
    header_ct = nonce(12) || AES-GCM(meta_key, header, aad = "ec2backup:pack-header")
    header    = "E2BP" version(u8) count(u32 LE) entry*count
    entry     = blob_id(32) type(u8) compression(u8) reserved(u16) offset(u64) length(u32)
                raw_length(u32)          -- all little-endian, 52 bytes
    header_len= u32 LE, length of header_ct
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

import blake3
import zstandard

from ec2backup import crypto

BLOB_DATA = 0  # the only blob type so far: a volume block
COMPRESSION_NONE = 0
COMPRESSION_ZSTD = 1

PACK_MAGIC = b"E2BP"
PACK_VERSION = 1
_HEADER_PREFIX = struct.Struct("<4sBI")
_ENTRY = struct.Struct("<32sBBHQII")
_TRAILER = struct.Struct("<I")
HEADER_AAD = b"ec2backup:pack-header"
# Largest header we accept when reading a trailer: 1M entries would be a 52 MiB header, far
# beyond any pack size we write; a bigger value can only come from corruption.
MAX_HEADER_LEN = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PackEntry:
    blob_id: bytes
    type: int
    compression: int
    offset: int
    length: int
    raw_length: int


def blob_aad(blob_id: bytes, compression: int) -> bytes:
    return blob_id + bytes((compression,))


class BlobCodec:
    """Compress+encrypt / decrypt+decompress blobs; one compressor per thread (not thread-safe)."""

    def __init__(self, data_key: bytes, level: int) -> None:
        self._sealer = crypto.Sealer(data_key)
        self._level = level
        self._local = threading.local()

    def _cctx(self) -> zstandard.ZstdCompressor:
        cctx: zstandard.ZstdCompressor | None = getattr(self._local, "cctx", None)
        if cctx is None:
            cctx = zstandard.ZstdCompressor(level=self._level)
            self._local.cctx = cctx
        return cctx

    def _dctx(self) -> zstandard.ZstdDecompressor:
        dctx: zstandard.ZstdDecompressor | None = getattr(self._local, "dctx", None)
        if dctx is None:
            dctx = zstandard.ZstdDecompressor()
            self._local.dctx = dctx
        return dctx

    def encode(self, blob_id: bytes, plain: bytes | memoryview) -> tuple[bytes, int]:
        """(ciphertext, compression flag)."""
        packed: bytes | memoryview = self._cctx().compress(plain)
        if len(packed) < len(plain):
            comp = COMPRESSION_ZSTD
        else:  # incompressible (random, already compressed): storing raw saves decode time
            packed, comp = plain, COMPRESSION_NONE
        return self._sealer.seal(packed, blob_aad(blob_id, comp)), comp

    def decode(self, blob_id: bytes, data: bytes | memoryview, comp: int, raw_length: int) -> bytes:
        """Plaintext of one blob; raises crypto.DecryptionError or ValueError on corruption."""
        packed = self._sealer.open(data, blob_aad(blob_id, comp))
        if comp == COMPRESSION_NONE:
            plain = packed
        elif comp == COMPRESSION_ZSTD:
            try:
                plain = self._dctx().decompress(packed, max_output_size=raw_length)
            except zstandard.ZstdError as exc:
                raise ValueError(f"zstd: {exc}") from exc
        else:
            raise ValueError(f"unknown compression {comp}")
        if len(plain) != raw_length:
            raise ValueError(f"blob length {len(plain)} != {raw_length}")
        return plain


def encode_header(entries: list[PackEntry], meta: crypto.Sealer) -> bytes:
    parts = [_HEADER_PREFIX.pack(PACK_MAGIC, PACK_VERSION, len(entries))]
    parts.extend(
        _ENTRY.pack(e.blob_id, e.type, e.compression, 0, e.offset, e.length, e.raw_length)
        for e in entries
    )
    sealed = meta.seal(b"".join(parts), HEADER_AAD)
    return sealed + _TRAILER.pack(len(sealed))


def decode_header(header_ct: bytes | memoryview, meta: crypto.Sealer) -> list[PackEntry]:
    plain = meta.open(header_ct, HEADER_AAD)
    magic, version, count = _HEADER_PREFIX.unpack_from(plain, 0)
    if magic != PACK_MAGIC or version != PACK_VERSION:
        raise ValueError("bad pack header magic/version")
    if len(plain) != _HEADER_PREFIX.size + count * _ENTRY.size:
        raise ValueError("pack header length mismatch")
    out = []
    for i in range(count):
        bid, typ, comp, _r, off, length, raw = _ENTRY.unpack_from(
            plain, _HEADER_PREFIX.size + i * _ENTRY.size
        )
        out.append(PackEntry(bid, typ, comp, off, length, raw))
    return out


def trailer_length(tail: bytes) -> int:
    """Length of header_ct from the last 4 bytes of a pack."""
    (n,) = _TRAILER.unpack(tail[-_TRAILER.size :])
    if n > MAX_HEADER_LEN:
        raise ValueError("pack header length out of range")
    return int(n)


TRAILER_SIZE = _TRAILER.size


def parse_pack(data: bytes, meta: crypto.Sealer) -> list[PackEntry]:
    """Entries of a whole pack held in memory (validates that blobs tile the data region)."""
    if len(data) < TRAILER_SIZE:
        raise ValueError("pack too short")
    hlen = trailer_length(data[-TRAILER_SIZE:])
    start = len(data) - TRAILER_SIZE - hlen
    if start < 0:
        raise ValueError("pack header length out of range")
    entries = decode_header(memoryview(data)[start : len(data) - TRAILER_SIZE], meta)
    pos = 0
    for e in entries:
        if e.offset != pos:
            raise ValueError("pack blobs do not tile the pack")
        pos += e.length
    if pos != start:
        raise ValueError("pack data region length mismatch")
    return entries


class PackBuilder:
    """Accumulates encoded blobs until the pack is large enough to upload.

    Blobs are kept as a list of chunks (no growing buffer to copy) and the backend writes them
    with one gathered write. The pack id (the hash of the whole pack) is computed when the pack
    is complete: `seal()` then `pack_id()`, which a writer runs on its upload thread, off the
    thread that reads and packs blocks.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.entries: list[PackEntry] = []

    def add(self, blob_id: bytes, ciphertext: bytes, comp: int, raw_length: int) -> None:
        self.entries.append(
            PackEntry(blob_id, BLOB_DATA, comp, self.size, len(ciphertext), raw_length)
        )
        self.chunks.append(ciphertext)
        self.size += len(ciphertext)

    def __len__(self) -> int:
        return self.size

    def seal(self, meta: crypto.Sealer) -> tuple[list[bytes], list[PackEntry]]:
        """Append the encrypted header: (chunks, entries); `size` is then the pack's size."""
        header = encode_header(self.entries, meta)
        self.chunks.append(header)
        self.size += len(header)
        return self.chunks, self.entries

    def finish(self, meta: crypto.Sealer) -> tuple[str, list[bytes], list[PackEntry]]:
        """(pack id, chunks, entries); the id is the content hash of the whole pack."""
        chunks, entries = self.seal(meta)
        return pack_id(chunks), chunks, entries


def pack_id(chunks: list[bytes]) -> str:
    """The id of a pack given as its chunks: BLAKE3 of their concatenation (releases the GIL)."""
    hasher = blake3.blake3(max_threads=1)
    for chunk in chunks:
        hasher.update(chunk)
    return hasher.hexdigest()

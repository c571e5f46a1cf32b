"""Paged per-volume block maps: block index -> blob id.

A volume's map is cut into pages of `PAGE_BLOCKS` entries (4096 x 512 KiB = 2 GiB of volume per
page). A page is 4096 fixed-size 32-byte entries, stored as an encrypted object `maps/<xx>/<id>`.
An entry is one of:
- the blob id of the block's content;
- `WRITTEN_ZERO_ID` (32 bytes 0xff, format version 2): the source wrote this block and it
  holds only zeros (listed by ListSnapshotBlocks; no blob is stored for it);
- `ZERO_ID` (32 zero bytes): a hole, never written in the source. In format version 1 maps it
  also stood for a written all-zero block: version 1 did not tell the two apart.
The difference matters on AWS: a block never put into an encrypted EBS-direct snapshot reads
as random bytes, a written zero block reads as zeros (see docs/repository-format.md).

The list of page ids (None for a page of holes only) is the map's root and lives in the restore
point. An incremental backup copies its parent's root and rewrites only the pages that contain
a changed block, so a 1% change of a 1 TiB volume writes a handful of 128 KiB pages, not a
64 MiB map.
"""

from __future__ import annotations

# The EBS direct API's block size (GetSnapshotBlock/ListChangedBlocks unit): using it as our
# blob size means a changed-block list maps 1:1 onto blobs, with no read-modify-write.
EBS_BLOCK_SIZE = 512 * 1024
# Bytes of one blob id (BLAKE3 output) and therefore of one map entry.
ID_SIZE = 32
# Entries per page: 4096 x 32 B = 128 KiB of plaintext per page covers 2 GiB of volume, small
# enough that a scattered 1% change rewrites little, large enough that a 16 TiB volume needs
# only 8192 page ids in its root.
PAGE_BLOCKS = 4096
PAGE_BYTES = PAGE_BLOCKS * ID_SIZE
ZERO_ID = bytes(ID_SIZE)
# No keyed BLAKE3 output is all ones in practice (2^-256), so the value is free to mark a
# written all-zero block without storing a blob for it.
WRITTEN_ZERO_ID = b"\xff" * ID_SIZE
ZERO_PAGE = bytes(PAGE_BYTES)
ZERO_BLOCK = bytes(EBS_BLOCK_SIZE)


def blocks_for(size: int, block_size: int = EBS_BLOCK_SIZE) -> int:
    """Number of blocks covering `size` bytes (the last one may be short)."""
    return -(-size // block_size)


def pages_for(size: int, block_size: int = EBS_BLOCK_SIZE, page_blocks: int = PAGE_BLOCKS) -> int:
    return -(-blocks_for(size, block_size) // page_blocks)


def entry(page: bytes | bytearray, slot: int) -> bytes:
    return bytes(page[slot * ID_SIZE : (slot + 1) * ID_SIZE])


def is_blob(entry_id: bytes) -> bool:
    """Does this map entry name a stored blob (not a hole, not a written zero block)?"""
    return entry_id != ZERO_ID and entry_id != WRITTEN_ZERO_ID

"""Paged per-volume block maps: block index -> blob id.

A volume's map is cut into pages of `PAGE_BLOCKS` entries (4096 x 512 KiB = 2 GiB of volume per
page). A page is 4096 fixed-size 32-byte entries (the blob id, or 32 zero bytes for a block that
is all zero / never written), stored as an encrypted object `maps/<xx>/<id>`. The list of page ids
(None for an all-zero page) is the map's root and lives in the restore point. An incremental
backup copies its parent's root and rewrites only the pages that contain a changed block, so a
1% change of a 1 TiB volume writes a handful of 128 KiB pages, not a 64 MiB map.
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
ZERO_PAGE = bytes(PAGE_BYTES)
ZERO_BLOCK = bytes(EBS_BLOCK_SIZE)


def blocks_for(size: int, block_size: int = EBS_BLOCK_SIZE) -> int:
    """Number of blocks covering `size` bytes (the last one may be short)."""
    return -(-size // block_size)


def pages_for(size: int, block_size: int = EBS_BLOCK_SIZE, page_blocks: int = PAGE_BLOCKS) -> int:
    return -(-blocks_for(size, block_size) // page_blocks)


def entry(page: bytes | bytearray, slot: int) -> bytes:
    return bytes(page[slot * ID_SIZE : (slot + 1) * ID_SIZE])

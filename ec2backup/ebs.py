"""EBS direct API helpers: paging loops boto3 lacks, and block reads with checksum checks.

boto3 has no paginator for ListSnapshotBlocks/ListChangedBlocks (botocore#3174); a page may be
short or empty while NextToken is set, so loop until the token is gone.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# The EBS direct API's unit: indexes, tokens and checksums are per 512 KiB block.
EBS_BLOCK_SIZE = 512 * 1024
# Largest page AWS allows; fewer calls against the 50/s account quota on List* calls.
LIST_PAGE_SIZE = 10000


class ChecksumMismatch(Exception):
    pass


@dataclass(frozen=True)
class BlockRef:
    index: int
    token: str


def no_pace() -> None:
    pass


def list_snapshot_blocks(
    ebs: Any, snapshot_id: str, pace: Callable[[], None] = no_pace
) -> Iterator[BlockRef]:
    """Every written block; `pace` is called before each page (the session's list budget)."""
    kwargs: dict[str, Any] = {"SnapshotId": snapshot_id, "MaxResults": LIST_PAGE_SIZE}
    while True:
        pace()
        page = ebs.list_snapshot_blocks(**kwargs)
        for block in page.get("Blocks", []):
            yield BlockRef(block["BlockIndex"], block["BlockToken"])
        token = page.get("NextToken")
        if not token:
            return
        kwargs["NextToken"] = token


def list_changed_blocks(
    ebs: Any,
    first_snapshot_id: str,
    second_snapshot_id: str,
    pace: Callable[[], None] = no_pace,
) -> Iterator[BlockRef | int]:
    """Changed blocks: a BlockRef into the second snapshot, or a bare index when the block
    exists only in the first (it reads as zeros in the second)."""
    kwargs: dict[str, Any] = {
        "FirstSnapshotId": first_snapshot_id,
        "SecondSnapshotId": second_snapshot_id,
        "MaxResults": LIST_PAGE_SIZE,
    }
    while True:
        pace()
        page = ebs.list_changed_blocks(**kwargs)
        for block in page.get("ChangedBlocks", []):
            if "SecondBlockToken" in block:
                yield BlockRef(block["BlockIndex"], block["SecondBlockToken"])
            else:
                yield block["BlockIndex"]
        token = page.get("NextToken")
        if not token:
            return
        kwargs["NextToken"] = token


def get_block(ebs: Any, snapshot_id: str, ref: BlockRef) -> bytes:
    """One block, verified against the SHA-256 checksum EBS returns with it."""
    response = ebs.get_snapshot_block(
        SnapshotId=snapshot_id, BlockIndex=ref.index, BlockToken=ref.token
    )
    data: bytes = response["BlockData"].read()
    expected = response.get("Checksum")
    actual = base64.b64encode(hashlib.sha256(data).digest()).decode()
    if expected and expected != actual:
        raise ChecksumMismatch(
            f"block {ref.index} of {snapshot_id}: checksum {actual} != {expected}"
        )
    return data

"""The EBS direct APIs over the lab's snapshot block maps, with AWS's semantics.

moto's own EBS backend knows nothing of EC2 snapshots and reports 512-byte blocks; the lab
answers these calls itself (see `research/moto-audit.md` §2A):
- BlockSize 524288; pagination with MaxResults (100-10000), NextToken, StartingBlockIndex;
- ListChangedBlocks: every index whose content differs, including blocks only in the second
  snapshot; ValidationException when the snapshots are not of one lineage;
- GetSnapshotBlock checks the block token and returns a base64 SHA-256 checksum; an unknown
  block is a 404 ResourceNotFoundException.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
from typing import Any

import moto.ec2.models as ec2_models

from ec2backup.lab.awserrors import LabAwsError, Response
from ec2backup.lab.blockstore import EBS_BLOCK_SIZE, block_token
from ec2backup.lab.requests import AwsRequest
from ec2backup.lab.runtime import get_runtime

# AWS's bounds for MaxResults on both list calls; the default when it is omitted.
MIN_RESULTS, MAX_RESULTS, DEFAULT_RESULTS = 100, 10000, 10000
# Block tokens and page tokens expire; AWS says 7 days / 60 min. Reported, not enforced.
TOKEN_TTL_SECONDS = 7 * 24 * 3600


def _snapshot(req: AwsRequest, snapshot_id: str) -> Any:
    backend = ec2_models.ec2_backends[req.account_id][req.region]
    snap = backend.snapshots.get(snapshot_id)
    if snap is None:
        raise LabAwsError(
            "ResourceNotFoundException", f"The snapshot '{snapshot_id}' does not exist.", 404
        )
    if snap.status != "completed":
        raise LabAwsError(
            "ValidationException",
            f"The snapshot '{snapshot_id}' is not in the completed state.",
            400,
        )
    return snap


def _int_param(req: AwsRequest, name: str, default: int | None = None) -> int | None:
    raw = req.param(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError as exc:
        raise LabAwsError("ValidationException", f"{name} must be an integer", 400) from exc


def _page_bounds(req: AwsRequest) -> tuple[int, int]:
    limit = _int_param(req, "maxResults", DEFAULT_RESULTS)
    assert limit is not None
    if not MIN_RESULTS <= limit <= MAX_RESULTS:
        raise LabAwsError(
            "ValidationException",
            f"MaxResults must be between {MIN_RESULTS} and {MAX_RESULTS}",
            400,
        )
    token = req.param("pageToken")
    if token:
        try:
            start = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
        except ValueError as exc:
            raise LabAwsError(
                "ValidationException", "The pagination token is invalid", 400
            ) from exc
    else:
        start = _int_param(req, "startingBlockIndex", 0) or 0
    if start < 0:
        raise LabAwsError("ValidationException", "StartingBlockIndex must be >= 0", 400)
    return start, limit


def _next_token(index: int) -> str:
    return base64.urlsafe_b64encode(str(index).encode()).decode().rstrip("=")


def _json(payload: dict[str, Any]) -> Response:
    return 200, [("Content-Type", "application/json")], json.dumps(payload).encode()


def _common(snap: Any) -> dict[str, Any]:
    return {
        "ExpiryTime": time.time() + TOKEN_TTL_SECONDS,
        "VolumeSize": snap.volume_size,
        "BlockSize": EBS_BLOCK_SIZE,
    }


def list_snapshot_blocks(req: AwsRequest) -> Response:
    snap = _snapshot(req, req.route["snap"])
    start, limit = _page_bounds(req)
    indexes = sorted(i for i in snap.block_map if i >= start)
    page, rest = indexes[:limit], indexes[limit:]
    payload = _common(snap)
    payload["Blocks"] = [
        {"BlockIndex": i, "BlockToken": block_token(snap.id, i, snap.block_map[i])} for i in page
    ]
    if rest:
        payload["NextToken"] = _next_token(rest[0])
    return _json(payload)


def list_changed_blocks(req: AwsRequest) -> Response:
    second = _snapshot(req, req.route["snap"])
    first_id = req.param("firstSnapshotId")
    if not first_id:
        raise LabAwsError(
            "ValidationException", "FirstSnapshotId is required with SecondSnapshotId", 400
        )
    first = _snapshot(req, first_id)
    if first.lineage != second.lineage:
        raise LabAwsError(
            "ValidationException",
            f"The snapshots '{first.id}' and '{second.id}' are not related (different lineage).",
            400,
        )
    start, limit = _page_bounds(req)
    a, b = first.block_map, second.block_map
    changed = sorted(i for i in set(a) | set(b) if i >= start and a.get(i) != b.get(i))
    page, rest = changed[:limit], changed[limit:]
    blocks = []
    for i in page:
        entry: dict[str, Any] = {"BlockIndex": i}
        if i in a:
            entry["FirstBlockToken"] = block_token(first.id, i, a[i])
        if i in b:
            entry["SecondBlockToken"] = block_token(second.id, i, b[i])
        blocks.append(entry)
    payload = _common(second)
    payload["ChangedBlocks"] = blocks
    if rest:
        payload["NextToken"] = _next_token(rest[0])
    return _json(payload)


def get_snapshot_block(req: AwsRequest) -> Response:
    snap = _snapshot(req, req.route["snap"])
    index = int(req.route["idx"])
    token = req.param("blockToken") or ""
    digest = snap.block_map.get(index)
    if digest is None:
        raise LabAwsError(
            "ResourceNotFoundException",
            f"Block {index} of snapshot '{snap.id}' does not exist.",
            404,
        )
    if token != block_token(snap.id, index, digest):
        raise LabAwsError(
            "ValidationException", f"The block token for block {index} is invalid.", 400
        )
    runtime = get_runtime()
    data = runtime.block_store.read(digest)
    checksum = base64.b64encode(hashlib.sha256(data).digest()).decode()
    with runtime.lock:
        runtime.blocks_served += 1
    return (
        200,
        [
            ("Content-Type", "application/octet-stream"),
            ("x-amz-Data-Length", str(len(data))),
            ("x-amz-Checksum", checksum),
            ("x-amz-Checksum-Algorithm", "SHA256"),
        ],
        data,
    )


HANDLERS = {
    "ListSnapshotBlocks": list_snapshot_blocks,
    "ListChangedBlocks": list_changed_blocks,
    "GetSnapshotBlock": get_snapshot_block,
}


def handle(req: AwsRequest) -> Response:
    handler = HANDLERS.get(req.action)
    if handler is None:
        # StartSnapshot / PutSnapshotBlock / CompleteSnapshot: not modelled by the lab yet.
        raise LabAwsError(
            "ValidationException", f"The lab does not implement EBS direct {req.action} yet.", 400
        )
    return handler(req)


def install(handlers: dict[str, Any]) -> None:
    handlers["ebs"] = handle

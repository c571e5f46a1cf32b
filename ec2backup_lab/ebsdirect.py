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

from ec2backup_lab import timing
from ec2backup_lab.awserrors import LabAwsError, Response
from ec2backup_lab.blockstore import EBS_BLOCK_SIZE, block_token
from ec2backup_lab.requests import AwsRequest
from ec2backup_lab.runtime import get_runtime

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


def _pending_snapshot(req: AwsRequest, snapshot_id: str) -> Any:
    backend = ec2_models.ec2_backends[req.account_id][req.region]
    snap = backend.snapshots.get(snapshot_id)
    if snap is None:
        raise LabAwsError(
            "ResourceNotFoundException", f"The snapshot '{snapshot_id}' does not exist.", 404
        )
    if getattr(snap, "_status_override", None) != "pending":
        raise LabAwsError(
            "ValidationException", f"The snapshot '{snapshot_id}' is not in the pending state.", 400
        )
    return snap


def start_snapshot(req: AwsRequest) -> Response:
    """StartSnapshot: a new EC2 snapshot, `pending` until CompleteSnapshot, optionally on top
    of a parent (it inherits the parent's blocks and lineage) and idempotent by ClientToken."""
    from moto.ec2.utils import random_snapshot_id

    from ec2backup_lab.ec2ext import Snapshot, _PhantomVolume

    body = req.json_body()
    backend = ec2_models.ec2_backends[req.account_id][req.region]
    tokens: dict[str, str] = backend.__dict__.setdefault("ebs_client_tokens", {})
    token = body.get("ClientToken")
    if token and token in tokens and tokens[token] in backend.snapshots:
        snap = backend.snapshots[tokens[token]]
    else:
        size = body.get("VolumeSize")
        if not isinstance(size, int) or not 1 <= size <= 65536:
            raise LabAwsError("ValidationException", "VolumeSize must be 1-65536 GiB", 400)
        parent = None
        if body.get("ParentSnapshotId"):
            parent = _snapshot(req, body["ParentSnapshotId"])
            if parent.volume_size > size:
                raise LabAwsError(
                    "ValidationException", "VolumeSize is smaller than the parent snapshot's", 400
                )
        encrypted = bool(body.get("Encrypted")) or bool(parent and parent.encrypted)
        kms_key = body.get("KmsKeyArn") or (parent.kms_key_id if parent else None)
        if encrypted and not kms_key:
            kms_key = backend.default_kms_key_id or backend._create_default_encryption_key()
        snap = Snapshot(
            backend,
            random_snapshot_id(),
            _PhantomVolume("vol-ffffffff", size),
            body.get("Description") or "",
            encrypted=encrypted,
            kms_key_id=kms_key,
            block_map=dict(parent.block_map) if parent else {},
            lineage=parent.lineage if parent else "",
            pending_seconds=0,
        )
        snap._status_override = "pending"
        snap.lab_started_at = time.monotonic()
        if encrypted:
            # AWS: a block never put reads as the decryption of nothing (random bytes), on
            # volumes created from the snapshot too; unencrypted ones read as zeros.
            snap.lab_noise = snap.id
        snap.lab_parent_id = parent.id if parent else None
        snap.lab_put_blocks = set()
        snap.add_tags({t["Key"]: t["Value"] for t in body.get("Tags") or []})
        backend.snapshots[snap.id] = snap
        if token:
            tokens[token] = snap.id
    return (
        201,
        [("Content-Type", "application/json")],
        json.dumps(
            {
                "SnapshotId": snap.id,
                "OwnerId": snap.owner_id,
                "Status": snap.status,
                "StartTime": time.time(),
                "VolumeSize": snap.volume_size,
                "BlockSize": EBS_BLOCK_SIZE,
                "Tags": [{"Key": t["key"], "Value": t["value"]} for t in snap.get_tags()],
                "ParentSnapshotId": getattr(snap, "lab_parent_id", None),
                "KmsKeyArn": snap.kms_key_id,
                "Description": snap.description,
            }
        ).encode(),
    )


def put_snapshot_block(req: AwsRequest) -> Response:
    """PutSnapshotBlock: exactly 524288 bytes, a matching base64 SHA-256, an index in range,
    only while the snapshot is pending."""
    snap = _pending_snapshot(req, req.route["snap"])
    started = getattr(snap, "lab_started_at", 0.0)
    if time.monotonic() - started < get_runtime().start_snapshot_unknown_seconds:
        # AWS: a new snapshot is not yet known to the block API (coldsnap PR #56).
        raise LabAwsError(
            "ResourceNotFoundException", f"The snapshot '{snap.id}' does not exist.", 404
        )
    index = int(req.route["idx"])
    data = req.body
    length = req.headers.get("x-amz-data-length")
    if len(data) != EBS_BLOCK_SIZE or (length is not None and int(length) != len(data)):
        raise LabAwsError(
            "ValidationException", f"DataLength must be {EBS_BLOCK_SIZE} (got {len(data)})", 400
        )
    if index >= snap.volume_size * 1024**3 // EBS_BLOCK_SIZE:
        raise LabAwsError("ValidationException", f"BlockIndex {index} is out of range", 400)
    algorithm = req.headers.get("x-amz-checksum-algorithm", "")
    checksum = req.headers.get("x-amz-checksum", "")
    actual = base64.b64encode(hashlib.sha256(data).digest()).decode()
    if algorithm != "SHA256" or checksum != actual:
        raise LabAwsError("ValidationException", "The checksum of the block does not match", 400)
    snap.block_map[index] = get_runtime().block_store.put(data)
    snap.lab_put_blocks.add(index)
    return 201, [("x-amz-Checksum", actual), ("x-amz-Checksum-Algorithm", "SHA256")], b""


def complete_snapshot(req: AwsRequest) -> Response:
    snap = _pending_snapshot(req, req.route["snap"])
    count = req.headers.get("x-amz-changedblockscount")
    if count is not None and int(count) != len(snap.lab_put_blocks):
        raise LabAwsError(
            "ValidationException",
            f"ChangedBlocksCount {count} does not match the "
            f"{len(snap.lab_put_blocks)} blocks written",
            400,
        )
    snap._status_override = None
    snap._completed_at = time.monotonic()
    return 202, [("Content-Type", "application/json")], json.dumps({"Status": "completed"}).encode()


HANDLERS = {
    "StartSnapshot": start_snapshot,
    "PutSnapshotBlock": put_snapshot_block,
    "CompleteSnapshot": complete_snapshot,
    "ListSnapshotBlocks": list_snapshot_blocks,
    "ListChangedBlocks": list_changed_blocks,
    "GetSnapshotBlock": get_snapshot_block,
}


def handle(req: AwsRequest) -> Response:
    handler = HANDLERS.get(req.action)
    if handler is None:
        raise LabAwsError("ValidationException", f"unknown EBS direct call {req.path}", 400)
    runtime = get_runtime()
    # Every call is metered; over a request limit it is throttled as AWS does, before any
    # work; admitted reads and writes wait out the modelled latency (timing.py).
    timing.admit_ebs_request(
        runtime.timing,
        runtime.ebs_meter,
        req.action,
        req.account_id,
        req.region,
        req.route.get("snap"),
    )
    return handler(req)


def install(handlers: dict[str, Any]) -> None:
    handlers["ebs"] = handle

"""Encrypted, authenticated snapshot metadata carried in AWS tags (DESIGN §3).

A snapshot of a set carries
- plain tags: `ec2backup:managed=true`, `ec2backup:set=<set id>`, `ec2backup:session=<id>`
  (for `describe_snapshots` filters, idempotent retries and the janitor) - no secrets;
- payload tags `ec2backup:m0`, `ec2backup:m1`, ...: base64url of
  `version(1) || AES-256-GCM(zstd(JSON metadata))` split into 256-character values.

The associated data binds the payload to the snapshot id, so a payload copied onto another
snapshot (or one tag swapped between two sets) fails authentication and is reported, never
trusted. The key is derived from the installation key (`derive_key(installation, TAG_CONTEXT)`).

Budget: AWS allows 50 user tags per resource, keys <= 128 and values <= 256 characters. The
volume's own tags are copied first; ours take 3 plain tags plus as few payload tags as fit.
"""

from __future__ import annotations

import base64
import json
from datetime import datetime

import zstandard
from pydantic import BaseModel, Field, ValidationError

from ec2backup import crypto

FORMAT_VERSION = 1
TAG_CONTEXT = "ec2backup snapshot tags v1"
MANAGED_KEY = "ec2backup:managed"
SET_KEY = "ec2backup:set"
SESSION_KEY = "ec2backup:session"
PAYLOAD_PREFIX = "ec2backup:m"
# AWS limits (per resource): 50 user tags, 256-character values.
MAX_TAGS_PER_RESOURCE = 50
MAX_TAG_VALUE = 256
PLAIN_TAG_COUNT = 3


class TagError(Exception):
    """Metadata tags are missing, foreign (another key) or tampered with."""


class SnapshotMetadata(BaseModel):
    """What a snapshot set member says about itself: enough to restore from tags alone."""

    v: int = FORMAT_VERSION
    set_id: str
    policy: str
    session_id: str
    instance_id: str
    instance_type: str | None = None
    # What an image of the instance must say for it to boot again (RegisterImage): x86_64 |
    # arm64, ENA support, legacy-bios | uefi.
    architecture: str | None = None
    ena_support: bool | None = None
    boot_mode: str | None = None
    availability_zone: str | None = None
    subnet_id: str | None = None
    region: str
    account: str
    volume_id: str
    device: str
    root_device: str | None = None
    size_gib: int
    volume_type: str | None = None
    iops: int | None = None
    throughput: int | None = None
    index: int
    count: int
    parent_snapshot_id: str | None = None
    source_snapshot_id: str | None = None  # set on replicas: the snapshot they copy
    encrypted: bool = False
    kms_key_id: str | None = None
    created: datetime
    instance_tags: dict[str, str] = Field(default_factory=dict)
    # Set once the session committed an image-level backup of this set (the catalog follows
    # them; encrypted like the rest, so no repository URL is in a plain tag).
    restore_point_id: str | None = None
    repository: str | None = None


def _tag_key(installation_key: bytes) -> bytes:
    return crypto.derive_key(installation_key, TAG_CONTEXT)


def _aad(snapshot_id: str) -> bytes:
    return f"ec2backup-tags:{FORMAT_VERSION}:{snapshot_id}".encode()


def plain_tags(set_id: str, session_id: str) -> list[dict[str, str]]:
    return [
        {"Key": MANAGED_KEY, "Value": "true"},
        {"Key": SET_KEY, "Value": set_id},
        {"Key": SESSION_KEY, "Value": session_id},
    ]


def encode(
    meta: SnapshotMetadata, installation_key: bytes, snapshot_id: str
) -> list[dict[str, str]]:
    """Payload tags for one snapshot (the plain tags are separate, see `plain_tags`)."""
    body = zstandard.ZstdCompressor(level=19).compress(
        meta.model_dump_json(exclude_none=True).encode()
    )
    sealed = bytes([FORMAT_VERSION]) + crypto.seal(
        _tag_key(installation_key), body, _aad(snapshot_id)
    )
    text = base64.urlsafe_b64encode(sealed).decode().rstrip("=")
    chunks = [text[i : i + MAX_TAG_VALUE] for i in range(0, len(text), MAX_TAG_VALUE)]
    return [{"Key": f"{PAYLOAD_PREFIX}{n}", "Value": chunk} for n, chunk in enumerate(chunks)]


def payload_tag_budget(user_tag_count: int) -> int:
    return MAX_TAGS_PER_RESOURCE - PLAIN_TAG_COUNT - user_tag_count


def is_payload_key(key: str) -> bool:
    """`ec2backup:m0`, `ec2backup:m1`, ... (not `ec2backup:managed`)."""
    return key.startswith(PAYLOAD_PREFIX) and key[len(PAYLOAD_PREFIX) :].isdigit()


def decode(
    tags: list[dict[str, str]], installation_key: bytes, snapshot_id: str
) -> SnapshotMetadata:
    """Authenticate and parse a snapshot's payload tags; TagError if absent or not genuine."""
    parts: dict[int, str] = {}
    for tag in tags:
        key = tag.get("Key", "")
        if is_payload_key(key):
            parts[int(key[len(PAYLOAD_PREFIX) :])] = tag.get("Value", "")
    if not parts:
        raise TagError(f"{snapshot_id}: no ec2backup metadata tags")
    if sorted(parts) != list(range(len(parts))):
        raise TagError(f"{snapshot_id}: metadata tags are incomplete")
    text = "".join(parts[i] for i in range(len(parts)))
    try:
        sealed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as exc:
        raise TagError(f"{snapshot_id}: metadata tags are not base64") from exc
    if not sealed or sealed[0] != FORMAT_VERSION:
        raise TagError(f"{snapshot_id}: unknown metadata format version")
    try:
        body = crypto.open_sealed(_tag_key(installation_key), sealed[1:], _aad(snapshot_id))
    except crypto.DecryptionError as exc:
        raise TagError(
            f"{snapshot_id}: metadata failed authentication (tampered, moved from "
            "another snapshot, or written by another installation)"
        ) from exc
    try:
        data = json.loads(zstandard.ZstdDecompressor().decompress(body))
        meta = SnapshotMetadata.model_validate(data)
    except (ValueError, ValidationError, zstandard.ZstdError) as exc:
        raise TagError(f"{snapshot_id}: metadata does not parse: {exc}") from exc
    return meta


def tag_value(tags: list[dict[str, str]] | None, key: str) -> str | None:
    for tag in tags or []:
        if tag.get("Key") == key:
            return tag.get("Value")
    return None

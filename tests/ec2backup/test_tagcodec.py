"""Unit tests of the snapshot tag codec: encrypted, authenticated, chunked metadata."""

from __future__ import annotations

import base64
import datetime as dt
import json
import os

import pytest

from ec2backup import tagcodec
from ec2backup.tagcodec import SnapshotMetadata, TagError

KEY = bytes(range(32))
SNAP = "snap-0123456789abcdef0"


def meta(**overrides: object) -> SnapshotMetadata:
    fields: dict[str, object] = {
        "set_id": "set-0123456789abcdef",
        "policy": "daily",
        "session_id": "backup-i-0abc-12345678",
        "instance_id": "i-0abcdef1234567890",
        "instance_type": "m5.large",
        "availability_zone": "us-east-1a",
        "region": "us-east-1",
        "account": "123456789012",
        "volume_id": "vol-0abcdef1234567890",
        "device": "/dev/sdf",
        "root_device": "/dev/sda1",
        "size_gib": 100,
        "volume_type": "gp3",
        "iops": 3000,
        "throughput": 125,
        "index": 1,
        "count": 3,
        "encrypted": True,
        "kms_key_id": "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab",
        "created": dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC),
        "instance_tags": {"Name": "web-1", "team": "payments"},
    }
    fields.update(overrides)
    return SnapshotMetadata.model_validate(fields)


def payload_text(tags: list[dict[str, str]]) -> str:
    return "".join(t["Value"] for t in sorted(tags, key=lambda t: int(t["Key"][11:])))


def test_round_trip() -> None:
    m = meta()
    tags = tagcodec.encode(m, KEY, SNAP)
    assert tagcodec.decode(tags, KEY, SNAP) == m


def test_round_trip_with_plain_and_foreign_tags() -> None:
    m = meta()
    tags = [
        {"Key": "Name", "Value": "web-1"},
        *tagcodec.plain_tags(m.set_id, m.session_id),
        *tagcodec.encode(m, KEY, SNAP),
        {"Key": "ec2backup:mx", "Value": "not a payload part"},
    ]
    assert tagcodec.decode(tags, KEY, SNAP) == m


def test_payload_is_opaque() -> None:
    m = meta()
    tags = tagcodec.encode(m, KEY, SNAP)
    text = payload_text(tags)
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    assert raw[0] == tagcodec.FORMAT_VERSION
    for secret in (m.instance_id, m.volume_id, "payments", "web-1", m.account, "daily"):
        assert secret not in text
        assert secret.encode() not in raw
    # Two encodings of the same metadata differ (fresh nonce).
    assert payload_text(tagcodec.encode(m, KEY, SNAP)) != text


def test_wrong_key_rejected() -> None:
    tags = tagcodec.encode(meta(), KEY, SNAP)
    with pytest.raises(TagError, match="authentication"):
        tagcodec.decode(tags, os.urandom(32), SNAP)


def test_moved_to_another_snapshot_rejected() -> None:
    tags = tagcodec.encode(meta(), KEY, SNAP)
    with pytest.raises(TagError, match="authentication"):
        tagcodec.decode(tags, KEY, "snap-0fedcba9876543210")


def test_tampered_char_rejected() -> None:
    tags = tagcodec.encode(meta(), KEY, SNAP)
    value = tags[0]["Value"]
    pos = len(value) // 2
    flipped = "A" if value[pos] != "A" else "B"
    tags[0] = {"Key": tags[0]["Key"], "Value": value[:pos] + flipped + value[pos + 1 :]}
    with pytest.raises(TagError):
        tagcodec.decode(tags, KEY, SNAP)


def test_swapped_parts_between_snapshots_rejected() -> None:
    big = meta(instance_tags={f"k{i}": os.urandom(40).hex() for i in range(10)})
    a = tagcodec.encode(big, KEY, SNAP)
    b = tagcodec.encode(big, KEY, "snap-0fedcba9876543210")
    assert len(a) >= 2 and len(a) == len(b)
    mixed = [a[0], *b[1:]]
    with pytest.raises(TagError):
        tagcodec.decode(mixed, KEY, SNAP)


def test_missing_and_truncated_chunks_rejected() -> None:
    big = meta(instance_tags={f"k{i}": os.urandom(40).hex() for i in range(10)})
    tags = tagcodec.encode(big, KEY, SNAP)
    assert len(tags) >= 3
    # A middle chunk missing: incomplete.
    with pytest.raises(TagError, match="incomplete"):
        tagcodec.decode([tags[0], *tags[2:]], KEY, SNAP)
    # The last chunk missing: the numbering is contiguous, authentication fails.
    with pytest.raises(TagError):
        tagcodec.decode(tags[:-1], KEY, SNAP)
    # A chunk cut short.
    cut = [*tags[:-1], {"Key": tags[-1]["Key"], "Value": tags[-1]["Value"][:-5]}]
    with pytest.raises(TagError):
        tagcodec.decode(cut, KEY, SNAP)
    # No payload at all.
    with pytest.raises(TagError, match="no ec2backup metadata"):
        tagcodec.decode(tagcodec.plain_tags("set-x", "s"), KEY, SNAP)
    # Garbage that is not base64 / wrong version.
    with pytest.raises(TagError):
        tagcodec.decode([{"Key": "ec2backup:m0", "Value": "!!!!"}], KEY, SNAP)
    with pytest.raises(TagError, match="version"):
        junk = base64.urlsafe_b64encode(b"\x09" + os.urandom(40)).decode()
        tagcodec.decode([{"Key": "ec2backup:m0", "Value": junk}], KEY, SNAP)


def test_chunks_fit_tag_limits() -> None:
    big = meta(instance_tags={f"tag{i}": os.urandom(100).hex() for i in range(40)})
    tags = tagcodec.encode(big, KEY, SNAP)
    assert len(tags) > 1
    for n, tag in enumerate(tags):
        assert tag["Key"] == f"ec2backup:m{n}"
        assert len(tag["Key"]) <= 128
        assert 0 < len(tag["Value"]) <= tagcodec.MAX_TAG_VALUE
    assert all(len(t["Value"]) == tagcodec.MAX_TAG_VALUE for t in tags[:-1])
    assert tagcodec.decode(tags, KEY, SNAP) == big


def test_typical_metadata_within_budget() -> None:
    # An instance with a realistic set of tags: ours plus the volume's own stay <= 50.
    m = meta(instance_tags={f"tag{i}": f"value-{i}-" + "x" * 30 for i in range(20)})
    tags = tagcodec.encode(m, KEY, SNAP)
    volume_tags = 20
    assert len(tags) <= tagcodec.payload_tag_budget(volume_tags)
    assert volume_tags + tagcodec.PLAIN_TAG_COUNT + len(tags) <= tagcodec.MAX_TAGS_PER_RESOURCE
    # A minimal one needs at most a couple of payload tags.
    assert len(tagcodec.encode(meta(instance_tags={}), KEY, SNAP)) <= 2


def test_budget_arithmetic() -> None:
    assert tagcodec.payload_tag_budget(0) == 47
    assert tagcodec.payload_tag_budget(43) == 4


def test_plain_tags_hold_no_metadata() -> None:
    m = meta()
    plain = tagcodec.plain_tags(m.set_id, m.session_id)
    assert {t["Key"] for t in plain} == {
        tagcodec.MANAGED_KEY,
        tagcodec.SET_KEY,
        tagcodec.SESSION_KEY,
    }
    assert m.instance_id not in json.dumps(plain)
    assert tagcodec.tag_value(plain, tagcodec.SET_KEY) == m.set_id
    assert tagcodec.tag_value(plain, "missing") is None
    assert tagcodec.tag_value(None, tagcodec.SET_KEY) is None


def test_payload_keys_are_numbered_and_not_the_marker() -> None:
    from ec2backup.tagcodec import MANAGED_KEY, is_payload_key

    assert is_payload_key("ec2backup:m0") and is_payload_key("ec2backup:m12")
    assert not is_payload_key(MANAGED_KEY)  # "ec2backup:managed" shares the prefix
    assert not is_payload_key("ec2backup:m") and not is_payload_key("ec2backup:mx")

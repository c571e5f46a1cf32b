"""Backends and the pack/blob codec at the byte level."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from repo_helpers import make_bucket

from ec2backup import crypto
from ec2backup.errors import UserError
from ec2backup.repository import backend as be
from ec2backup.repository.image import allocated_blocks
from ec2backup.repository.pack import (
    COMPRESSION_NONE,
    COMPRESSION_ZSTD,
    BlobCodec,
    PackBuilder,
    parse_pack,
)


def test_s3_multipart_ranges_and_versioned_delete(lab_aws, aws_env) -> None:  # type: ignore[no-untyped-def]
    bucket = make_bucket(lab_aws, versioned=True)
    b = be.open_backend(f"s3://{bucket}/p/q")
    assert isinstance(b, be.S3Backend)
    big = random.Random(1).randbytes(be.MULTIPART_THRESHOLD + 3 * 1024 * 1024)  # 19 MiB
    b.put("data/ab/big", [big[:1000], big[1000:]])  # chunk lists are joined
    assert b.get("data/ab/big") == big
    assert b.get_range("data/ab/big", 12345, 100) == big[12345:12445]
    assert b.size("data/ab/big") == len(big)
    b.put("index/x", b"small")
    assert dict(b.list("")) == {"data/ab/big": len(big), "index/x": 5}
    b.delete("index/x")  # leaves a delete marker on a versioned bucket ...
    assert dict(b.list("index/")) == {}  # ... which listings ignore
    assert not b.exists("index/x")
    with pytest.raises(be.ObjectMissing):
        b.get("index/x")
    versions = lab_aws.client("s3").list_object_versions(Bucket=bucket, Prefix="p/q/index/")
    assert versions.get("DeleteMarkers")
    # every key stays under the prefix
    keys = [o["Key"] for o in lab_aws.client("s3").list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["p/q/data/ab/big"]


def test_s3_client_config(aws_env) -> None:  # type: ignore[no-untyped-def]
    client = be.make_s3_client()
    assert client.meta.config.retries["mode"] == "standard"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.endpoint_url == aws_env["AWS_ENDPOINT_URL"]


def test_local_backend_atomic_put(tmp_path: Path) -> None:
    b = be.open_backend(str(tmp_path / "r"))
    b.put("data/00/x", b"abc")
    (tmp_path / "r" / "data" / "00" / ".tmp-crashed").write_bytes(b"partial")
    assert dict(b.list("")) == {"data/00/x": 3}  # temp files of crashed writes are invisible
    with pytest.raises(ValueError):
        b.put("../escape", b"x")
    with pytest.raises(UserError):
        be.open_backend("gs://bucket/x")


def test_blob_codec_and_pack_roundtrip() -> None:
    data_key, meta_key = crypto.random_key(), crypto.random_key()
    codec = BlobCodec(data_key, 3)
    meta = crypto.Sealer(meta_key)
    text = b"log line 42\n" * 50000
    rnd = os.urandom(300000)
    builder = PackBuilder()
    blobs = {}
    for plain in (text, rnd):
        bid = crypto.keyed_hash(data_key, plain)
        ct, comp = codec.encode(bid, plain)
        assert comp == (COMPRESSION_ZSTD if plain is text else COMPRESSION_NONE)
        builder.add(bid, ct, comp, len(plain))
        blobs[bid] = plain
    pack_id, chunks, _entries = builder.finish(meta)
    data = b"".join(chunks)
    assert crypto.content_hash(data).hex() == pack_id
    entries = parse_pack(data, meta)
    for e in entries:
        ct = data[e.offset : e.offset + e.length]
        assert codec.decode(e.blob_id, ct, e.compression, e.raw_length) == blobs[e.blob_id]
        with pytest.raises(crypto.DecryptionError):  # a blob cannot pose as another one
            other = next(b for b in blobs if b != e.blob_id)
            codec.decode(other, ct, e.compression, e.raw_length)
    with pytest.raises(crypto.DecryptionError):
        parse_pack(data, crypto.Sealer(crypto.random_key()))


def test_allocated_blocks_uses_holes(tmp_path: Path) -> None:
    p = tmp_path / "sparse"
    bs = 512 * 1024
    with open(p, "wb") as f:
        f.truncate(100 * bs)
        f.seek(3 * bs + 10)
        f.write(b"x")
        f.seek(50 * bs - 1)
        f.write(b"yy")  # straddles blocks 49 and 50
    fd = os.open(p, os.O_RDONLY)
    try:
        got = list(allocated_blocks(fd, 100 * bs))
    finally:
        os.close(fd)
    # filesystems allocate in 4 KiB units at least; every block with data must be listed, and
    # far fewer than all 100 blocks
    assert {3, 49, 50} <= set(got) and len(got) < 10

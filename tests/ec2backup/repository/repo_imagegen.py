"""Deterministic test images: sparse holes, text-like (compressible) and random blocks."""

from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

BS = 512 * 1024

_WORDS = (
    b"GET POST /api/v1/items 200 404 nginx kernel: eth0 link up session opened for user root "
    b"latency_ms=12 request_id= host=ip-10-0-1-23 Connection reset by peer upstream timed out "
).split()


_TEXT_BASE: list[bytes] = []


def _text_base() -> bytes:
    """1 MiB of log-like text, generated once (a Python loop per line is slow)."""
    if not _TEXT_BASE:
        rng = random.Random(0)
        out = bytearray()
        while len(out) < 1 << 20:
            line = b" ".join(rng.choice(_WORDS) for _ in range(12))
            out += b"2026-11-25T12:%02d:%02d " % (rng.randrange(60), rng.randrange(60))
            out += line + b"\n"
        _TEXT_BASE.append(bytes(out[: 1 << 20]))
    return _TEXT_BASE[0]


def text_block(rng: random.Random, size: int = BS) -> bytes:
    """Compressible (~4-5:1 with zstd) and unique: 32 KiB slices of the text base at random
    offsets, each after a random request id."""
    base = _text_base()
    out = bytearray()
    while len(out) < size:
        off = rng.randrange(0, len(base) - 32768)
        out += b"request_id=%016x " % rng.getrandbits(64) + base[off : off + 32768]
    return bytes(out[:size])


def random_block(rng: random.Random, size: int = BS) -> bytes:
    return rng.randbytes(size)


def make_image(
    path: Path,
    n_blocks: int,
    seed: int = 42,
    zero: float = 0.4,
    text: float = 0.35,
    tail: int = 0,
    run: int = 8,
) -> str:
    """Write a sparse image of n_blocks*BS + tail bytes in runs of similar blocks; sha256 hex."""
    rng = random.Random(seed)
    size = n_blocks * BS + tail
    with open(path, "wb") as f:
        f.truncate(size)
        b = 0
        total = n_blocks + (1 if tail else 0)
        while b < total:
            kind = rng.random()
            length = rng.randint(1, run)
            for i in range(b, min(total, b + length)):
                n = min(BS, size - i * BS)
                if kind < zero:
                    continue  # a hole
                data = text_block(rng, n) if kind < zero + text else random_block(rng, n)
                f.seek(i * BS)
                f.write(data)
            b += length
    return sha256_file(path)


def mutate(path: Path, n_changes: int, seed: int) -> list[int]:
    """Overwrite some blocks (whole or partly, some with zeros); returns the changed indexes."""
    rng = random.Random(seed)
    size = os.path.getsize(path)
    n_blocks = -(-size // BS)
    changed = sorted(rng.sample(range(n_blocks), min(n_changes, n_blocks)))
    with open(path, "r+b") as f:
        for b in changed:
            n = min(BS, size - b * BS)
            r = rng.random()
            if r < 0.2:
                data = bytes(n)
            elif r < 0.6:
                data = text_block(rng, n)
            elif r < 0.8:
                data = random_block(rng, n)
            else:  # partial overwrite inside the block
                k = rng.randint(1, min(n, 65536))
                off = rng.randrange(0, n - k + 1)
                f.seek(b * BS + off)
                f.write(rng.randbytes(k))
                continue
            f.seek(b * BS)
            f.write(data)
    return changed


def write_changed(path: Path, blocks: list[int]) -> Path:
    path.write_text(json.dumps(blocks))
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()

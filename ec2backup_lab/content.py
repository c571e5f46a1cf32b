"""Realistic, deterministic volume content for the lab: log-like text, random data, zeros.

Speed matters (seeding GiB of data): random blocks come from BLAKE3's XOF (several GB/s), text
blocks are slices of a per-seed corpus of syslog/nginx-like lines (compresses ~3-5x with zstd,
like real logs), so no Python loop runs per byte.
"""

from __future__ import annotations

import functools
import random

import blake3

from ec2backup_lab.blockstore import EBS_BLOCK_SIZE, ZERO_BLOCK

# Share of written blocks of each kind, close to what the benchmark data set measured on real
# root volumes: mostly compressible text, a good share of incompressible data, a few zero runs.
TEXT_SHARE, RANDOM_SHARE = 0.55, 0.40  # the rest are written zero blocks
CORPUS_BYTES = 2 * 1024 * 1024

_HOSTS = ["web-1", "web-2", "db-primary", "cache-a", "batch-7", "api-3"]
_PATHS = [
    "/api/v1/orders",
    "/login",
    "/static/app.js",
    "/healthz",
    "/api/v2/items?page=",
    "/metrics",
    "/checkout",
    "/images/logo.png",
]
_WORDS = [
    "backup", "restore", "volume", "snapshot", "region", "account", "replica", "worker",
    "policy", "schedule", "session", "block", "index", "pack", "retention", "archive",
    "glacier", "encryption", "checksum",
]  # fmt: skip


@functools.lru_cache(maxsize=4)
def _corpus(seed: int) -> bytes:
    rng = random.Random(seed)
    lines: list[str] = []
    size = 0
    while size < CORPUS_BYTES:
        kind = rng.random()
        day, hour, minute = rng.randint(1, 28), rng.randint(0, 23), rng.randint(0, 59)
        second, milli = rng.randint(0, 59), rng.randint(0, 999)
        ts = f"2026-11-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}.{milli:03d}Z"
        if kind < 0.5:
            line = (
                f"{ts} {rng.choice(_HOSTS)} nginx: 10.{rng.randint(0, 255)}.{rng.randint(0, 255)}."
                f'{rng.randint(1, 254)} "GET {rng.choice(_PATHS)}{rng.randint(1, 99)} HTTP/1.1" '
                f"{rng.choice([200, 200, 200, 304, 404, 500])} {rng.randint(100, 90000)} "
                f"rt={rng.random():.3f} req={rng.getrandbits(64):016x}"
            )
        elif kind < 0.8:
            line = (
                f"{ts} {rng.choice(_HOSTS)} app[{rng.randint(100, 9999)}]: "
                f"{rng.choice(['INFO', 'INFO', 'WARN', 'DEBUG', 'ERROR'])} "
                + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 12)))
                + f" id={rng.getrandbits(32):08x}"
            )
        else:
            line = (
                f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)} = {rng.randint(0, 10**6)}  # "
                + " ".join(rng.choice(_WORDS) for _ in range(rng.randint(2, 8)))
            )
        lines.append(line)
        size += len(line) + 1
    return ("\n".join(lines) + "\n").encode()


class ContentGenerator:
    """Blocks of each kind, reproducible from (seed, key)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.corpus = _corpus(seed)
        self._rng = random.Random(seed ^ 0x5EED)

    def random_block(self, key: str) -> bytes:
        return blake3.blake3(f"{self.seed}:{key}".encode()).digest(length=EBS_BLOCK_SIZE)

    def text_block(self, key: str) -> bytes:
        # A slice at a key-dependent offset, so blocks differ (no accidental dedup) but
        # compress like logs do.
        h = int.from_bytes(blake3.blake3(f"t{self.seed}:{key}".encode()).digest(8), "big")
        start = h % (len(self.corpus) - EBS_BLOCK_SIZE)
        header = f"# block {key}\n".encode()
        return header + self.corpus[start : start + EBS_BLOCK_SIZE - len(header)]

    def block(self, key: str, roll: float) -> bytes:
        if roll < TEXT_SHARE:
            return self.text_block(key)
        if roll < TEXT_SHARE + RANDOM_SHARE:
            return self.random_block(key)
        return ZERO_BLOCK


def layout(rng: random.Random, blocks_total: int, fill: float) -> list[tuple[int, int]]:
    """Extents (start, length) covering `fill` of the volume, like a filesystem's files."""
    target = min(blocks_total, round(blocks_total * fill))
    runs: list[int] = []
    while sum(runs) < target:
        # Mean run of ~12 blocks (6 MiB), as measured on the benchmark image.
        runs.append(min(target - sum(runs), 1 + int(rng.expovariate(1 / 11))))
    weights = [rng.random() for _ in range(len(runs) + 1)]
    free, scale = blocks_total - target, sum(weights) or 1.0
    gaps = [int(free * w / scale) for w in weights]
    extents, cursor = [], 0
    for gap, run in zip(gaps, runs, strict=False):
        cursor += gap
        extents.append((cursor, run))
        cursor += run
    return extents

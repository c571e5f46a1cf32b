"""The benchmark image: a deterministic sparse raw disk image and its day-1 mutation.

Shape (docs: /work/shared/research/performance-facts.md, section 0), for the default 2 GiB:

- 4096 blocks of 512 KiB: 40% zero (left as sparse holes), 35% text/log, 25% random;
- the non-zero blocks form extents with a mean run of ~12 blocks (like a filesystem's files),
  each extent holding one kind of content (a log file, a compressed archive...);
- text blocks are slices of a corpus of syslog/nginx-like lines (70%) and config/prose-like text
  (30%); zstd-3 compresses them ~4.4:1, as the measured data set;
- `mutate` changes 1% of the blocks in place (39% new text, 34% new random, 27% partial 4-64 KiB
  overwrites) and writes `IMG.day1.changed.json`, the changed-block list (EBS ListChangedBlocks).

Everything derives from the seed, so every run (and every machine) backs up the same bytes.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

import blake3

from ec2backup_lab.content import layout

BLOCK_SIZE = 512 * 1024  # the EBS snapshot block, the unit of CBT and of ec2backup's map
GIB = 1024**3
SEED = 42

# The measured mix (share of all blocks); whatever is neither text nor random stays a hole.
TEXT_SHARE = 0.35
RANDOM_SHARE = 0.25
# Day-1 churn: 1% of the blocks, split as measured (16 text : 14 random : 11 partial of 41).
CHANGE_SHARE = 0.01
CHANGE_MIX_TEXT, CHANGE_MIX_RANDOM = 16 / 41, 14 / 41
# Partial overwrites are filesystem-sized writes: 4 KiB pages, 4-64 KiB long.
PAGE = 4096
PARTIAL_PAGES = (1, 16)

# The text corpus: big enough that two blocks rarely share much (text blocks are slices of it at
# seed-derived offsets, so no accidental dedup), small enough to build in about a second.
CORPUS_BYTES = 8 * 1024 * 1024
LOG_LINE_SHARE = 0.7

_HOSTS = [f"ip-10-0-{i // 8}-{i * 37 % 250 + 4}" for i in range(12)]
_SERVICES = ["nginx", "sshd", "systemd", "kernel", "cron", "app", "dockerd", "postgres"]
_PATHS = [
    "/api/v1/orders",
    "/api/v1/orders/{}",
    "/login",
    "/static/app.{}.js",
    "/healthz",
    "/api/v2/items?page={}",
    "/metrics",
    "/checkout",
    "/images/logo.png",
    "/api/v1/users/{}/profile",
]
_AGENTS = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_1) AppleWebKit/605.1.15 Safari/605.1.15",
    "curl/8.4.0",
    "kube-probe/1.28",
    "python-requests/2.31.0",
]
_MESSAGES = [
    "Started Session {} of user ec2-user.",
    "Accepted publickey for ec2-user from 10.0.{}.{} port {} ssh2",
    "connection pool exhausted, waiting for a free connection (waited {} ms)",
    "checkpoint complete: wrote {} buffers; sync files={}, longest={} ms",
    "GC pause {} ms, heap {} MiB",
    "Finished daily cleanup of temporary directories (took {} ms).",
    "worker {} processed {} messages from queue orders-events",
]
_WORD_TEXT = (
    "the of and to in is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when if so no will "
    "server volume snapshot backup region restore policy schedule retention encryption network "
    "interface default timeout enabled disabled listen port user group path file directory"
)
_WORDS = _WORD_TEXT.split()


def _log_line(rng: random.Random, t_ms: int) -> str:
    """One syslog or nginx access-log line at time t_ms (timestamps increase, like a real log)."""
    sec, ms = divmod(t_ms, 1000)
    minute, second = divmod(sec, 60)
    hour, minute = divmod(minute, 60)
    ts = f"2026-11-24T{hour % 24:02d}:{minute:02d}:{second:02d}.{ms:03d}Z"
    host = rng.choice(_HOSTS)
    if rng.random() < 0.6:
        path = rng.choice(_PATHS).format(rng.randint(1, 5000))
        status = rng.choices([200, 304, 404, 500], weights=[85, 8, 5, 2])[0]
        return (
            f"{ts} {host} nginx: 10.{rng.randint(0, 3)}.{rng.randint(0, 40)}.{rng.randint(1, 254)}"
            f' - - "GET {path} HTTP/1.1" {status} {rng.randint(200, 60000)} "-" '
            f'"{rng.choice(_AGENTS)}" rt={rng.randint(1, 2500) / 1000:.3f} '
            f"req_id={rng.getrandbits(64):016x}"
        )
    service = rng.choice(_SERVICES)
    msg = rng.choice(_MESSAGES).format(*(rng.randint(1, 999) for _ in range(3)))
    level = rng.choices(["INFO", "WARN", "ERROR", "DEBUG"], weights=[80, 10, 3, 7])[0]
    span = rng.getrandbits(32)  # a trace id: the entropy that keeps real logs near 4.4:1
    return f"{ts} {host} {service}[{rng.randint(300, 32000)}]: {level} {msg} span={span:08x}"


def _prose_line(rng: random.Random) -> str:
    """A config-file or documentation-like line."""
    if rng.random() < 0.5:
        key = "_".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 3)))
        value = rng.choice([str(rng.randint(0, 65535)), "true", "false", rng.choice(_WORDS)])
        return f"{key} = {value}"
    return " ".join(rng.choice(_WORDS) for _ in range(rng.randint(6, 16))).capitalize() + "."


def build_corpus(seed: int) -> bytes:
    """CORPUS_BYTES of text: runs of log lines and of config/prose, like a /var and /etc mix."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    t_ms = rng.randint(0, 3_600_000)
    while size < CORPUS_BYTES:
        log = rng.random() < LOG_LINE_SHARE
        for _ in range(rng.randint(20, 200)):  # a run of lines of one file kind
            if log:
                t_ms += rng.randint(0, 400)
                line = _log_line(rng, t_ms)
            else:
                line = _prose_line(rng)
            out.append(line)
            size += len(line) + 1
    return ("\n".join(out) + "\n").encode()[:CORPUS_BYTES]


class Content:
    """Block contents, each a pure function of (seed, key)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.corpus = build_corpus(seed)

    def _hash(self, tag: str, key: str, length: int) -> bytes:
        return blake3.blake3(f"{tag}:{self.seed}:{key}".encode()).digest(length=length)

    def random_block(self, key: str) -> bytes:
        return self._hash("r", key, BLOCK_SIZE)  # BLAKE3 XOF: several GB/s, incompressible

    def random_bytes(self, key: str, length: int) -> bytes:
        return self._hash("p", key, length)

    def text_block(self, key: str) -> bytes:
        start = int.from_bytes(self._hash("t", key, 8), "big") % (len(self.corpus) - BLOCK_SIZE)
        return self.corpus[start : start + BLOCK_SIZE]


@dataclass(frozen=True)
class ImageInfo:
    path: Path
    size: int
    blocks: int
    text_blocks: int
    random_blocks: int
    zero_blocks: int
    extents: int


def _counts(n_blocks: int) -> tuple[int, int]:
    return round(n_blocks * TEXT_SHARE), round(n_blocks * RANDOM_SHARE)


def _plan(n_blocks: int, seed: int) -> tuple[list[tuple[int, int, str]], int]:
    """Typed extents (start, length, 'text'|'random') and the extent count before splitting."""
    n_text, n_random = _counts(n_blocks)
    rng = random.Random(seed)
    extents = layout(rng, n_blocks, (n_text + n_random) / n_blocks)
    order = list(range(len(extents)))
    rng.shuffle(order)  # which files are logs and which are archives: random, not by position
    kinds: dict[int, list[tuple[int, int, str]]] = {}
    text_left = n_text
    for i in order:
        start, length = extents[i]
        if text_left >= length:
            kinds[i] = [(start, length, "text")]
            text_left -= length
        elif text_left > 0:  # split one extent to hit the exact share
            kinds[i] = [
                (start, text_left, "text"),
                (start + text_left, length - text_left, "random"),
            ]
            text_left = 0
        else:
            kinds[i] = [(start, length, "random")]
    typed = [piece for i in range(len(extents)) for piece in kinds[i]]
    return typed, len(extents)


def generate(path: Path, size_gib: float, seed: int = SEED) -> ImageInfo:
    """Write the day-0 image (sparse: zero blocks are never written) and fsync it."""
    n_blocks = int(size_gib * GIB) // BLOCK_SIZE
    size = n_blocks * BLOCK_SIZE
    content = Content(seed)
    typed, n_extents = _plan(n_blocks, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    Path(f"{path}.day1.changed.json").unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    n_text = n_random = 0
    try:
        os.ftruncate(fd, size)
        for start, length, kind in typed:
            for b in range(start, start + length):
                if kind == "text":
                    data = content.text_block(f"d0:{b}")
                    n_text += 1
                else:
                    data = content.random_block(f"d0:{b}")
                    n_random += 1
                os.pwrite(fd, data, b * BLOCK_SIZE)
        os.fsync(fd)
    finally:
        os.close(fd)
    return ImageInfo(
        path=path,
        size=size,
        blocks=n_blocks,
        text_blocks=n_text,
        random_blocks=n_random,
        zero_blocks=n_blocks - n_text - n_random,
        extents=n_extents,
    )


@dataclass(frozen=True)
class Mutation:
    changed_list: Path
    changed: list[int]
    new_text: int
    new_random: int
    partial: int


def mutate(path: Path, seed: int = SEED) -> Mutation:
    """Day 1: change 1% of the blocks in place, scattered over the written extents."""
    size = path.stat().st_size
    n_blocks = size // BLOCK_SIZE
    typed, _ = _plan(n_blocks, seed)
    written = [b for start, length, _ in typed for b in range(start, start + length)]
    rng = random.Random(seed + 1)
    n_changed = max(1, round(n_blocks * CHANGE_SHARE))
    n_text = round(n_changed * CHANGE_MIX_TEXT)
    n_random = round(n_changed * CHANGE_MIX_RANDOM)
    picked = rng.sample(written, n_changed)
    content = Content(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        for i, b in enumerate(picked):
            off = b * BLOCK_SIZE
            if i < n_text:
                os.pwrite(fd, content.text_block(f"d1:{b}"), off)
            elif i < n_text + n_random:
                os.pwrite(fd, content.random_block(f"d1:{b}"), off)
            else:
                pages = rng.randint(*PARTIAL_PAGES)
                at = rng.randrange(BLOCK_SIZE // PAGE - pages + 1) * PAGE
                os.pwrite(fd, content.random_bytes(f"d1:{b}", pages * PAGE), off + at)
        os.fsync(fd)
    finally:
        os.close(fd)
    changed = sorted(picked)
    listing = Path(f"{path}.day1.changed.json")
    listing.write_text(json.dumps(changed))
    return Mutation(
        changed_list=listing,
        changed=changed,
        new_text=n_text,
        new_random=n_random,
        partial=n_changed - n_text - n_random,
    )

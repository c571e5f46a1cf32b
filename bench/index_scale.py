"""Index memory at scale: a 1% incremental into repositories of 1 and 10 million blobs.

The repository index is what grows with a repository (every session loads all of it), so the
figure that matters is the peak RSS of an ordinary session once the repository is large. Each
scale gets its own repository: `n` synthetic blob entries (random ids in packs of 64, written
as real, encrypted index files; the packs themselves are not written, nothing reads them),
then a full backup and a 1% incremental of the bench image through the CLI, measured like
every other step. The baseline is the same incremental in the main run's small repository.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench import dataset
from bench.measure import Sample
from bench.tools import PASSWORD, Ec2Backup
from ec2backup.repository.index import FILE_BLOB, FILE_PACK, IndexTable
from ec2backup.repository.repo import Repository

SCALES = {"1m": 1_000_000, "10m": 10_000_000}
# Issue 18's bound for a 1% incremental into the 10-million-blob repository; a c5.large
# worker has 4 GiB for everything else it runs.
TARGET_RSS_MIB = 512.0
BLOBS_PER_PACK = 64  # ~300 KB stored per 512 KiB block: a 16-20 MiB pack
PACKS_PER_FILE = 2000  # as prune writes them (ec2backup.repository.prune.PACKS_PER_INDEX)
STORED_BLOB_BYTES = 300_000
SEED = 20261202


@dataclass
class ScaleRun:
    blobs: int
    synthesize_s: float
    full: Sample
    incremental: Sample

    def as_dict(self) -> dict[str, Any]:
        return {
            "blobs": self.blobs,
            "synthesize_s": round(self.synthesize_s, 1),
            "full": self.full.as_dict(),
            "incremental": self.incremental.as_dict(),
        }


def synthesize(repo: Repository, n_blobs: int, seed: int = SEED) -> None:
    """Index files naming `n_blobs` random blobs (what a repository of that size loads)."""
    rng = np.random.default_rng(seed)
    per_file = PACKS_PER_FILE * BLOBS_PER_PACK
    for first in range(0, n_blobs, per_file):
        k = min(per_file, n_blobs - first)
        n_packs = -(-k // BLOBS_PER_PACK)
        packs = np.zeros(n_packs, FILE_PACK)
        packs["id"] = np.frombuffer(rng.bytes(32 * n_packs), "V32")
        packs["count"] = BLOBS_PER_PACK
        packs["count"][-1] = k - BLOBS_PER_PACK * (n_packs - 1)
        packs["size"] = packs["count"].astype(np.uint64) * STORED_BLOB_BYTES
        blobs = np.zeros(k, FILE_BLOB)
        blobs["id"] = np.frombuffer(rng.bytes(32 * k), "V32")
        blobs["offset"] = (np.arange(k) % BLOBS_PER_PACK) * STORED_BLOB_BYTES
        blobs["length"] = STORED_BLOB_BYTES
        blobs["raw_length"] = dataset.BLOCK_SIZE
        blobs["compression"] = 1
        repo.save_object("index", IndexTable(packs, blobs).encode())


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_scales(work: Path, exe: str, size_gib: float, scales: list[str]) -> dict[str, ScaleRun]:
    out: dict[str, ScaleRun] = {}
    image = work / "index-disk.img"
    for key in scales:
        n = SCALES[key]
        repo_dir = work / f"repo-index-{key}"
        if repo_dir.exists():
            shutil.rmtree(repo_dir)
        t0 = time.perf_counter()
        synthesize(Repository.create(str(repo_dir), PASSWORD.encode()), n)
        synth = time.perf_counter() - t0
        dataset.generate(image, size_gib)  # day 0 again: the main run left it mutated
        tool = Ec2Backup(work, exe)
        tool.repo = repo_dir
        full = tool.full(image)
        mutation = dataset.mutate(image)
        inc = tool.incremental(image, mutation.changed_list)
        out[key] = ScaleRun(n, synth, full, inc)
        _say(
            f"  index {key:>3}: {n:,} blobs synthesized in {synth:.1f}s; full {full.wall_s:.2f}s "
            f"{full.max_rss_mib:.0f} MiB; 1% incremental {inc.wall_s:.2f}s "
            f"{inc.max_rss_mib:.0f} MiB peak RSS"
        )
        shutil.rmtree(repo_dir)
    image.unlink(missing_ok=True)
    Path(f"{image}.day1.changed.json").unlink(missing_ok=True)
    return out


def figures(scale_runs: dict[str, ScaleRun], baseline_rss_mib: float) -> dict[str, Any]:
    """`index_rss_mib_<scale>` rows in the results.json figure shape."""
    rows: dict[str, Any] = {}
    for key, run in scale_runs.items():
        ours = run.incremental.max_rss_mib
        rows[f"index_rss_mib_{key}"] = {
            "unit": "MiB",
            "ec2backup": round(ours, 1),
            "baseline": round(baseline_rss_mib, 1),
            "baseline_is": "the same 1% incremental into the main run's small repository",
            "ratio": round(ours / baseline_rss_mib, 3) if baseline_rss_mib else None,
            "ratio_is": "ours/baseline",
            "target": f"< {TARGET_RSS_MIB:g} MiB",
            "pass": ours < TARGET_RSS_MIB,
            "blobs": run.blobs,
            "incremental_s": round(run.incremental.wall_s, 2),
        }
    return rows


def format_rows(rows: dict[str, Any]) -> str:
    lines = []
    for key, row in rows.items():
        lines.append(
            f"{key:<22}{row['ec2backup']:>12.1f}{row['baseline']:>12.1f}{row['ratio']:>8.2f}x  "
            f"{'ours/small':<12}{row['target']:>9}  {'PASS' if row['pass'] else 'FAIL'}"
            f"  ({row['blobs']:,} blobs, incremental {row['incremental_s']:.2f}s)"
        )
    return "\n".join(lines)

"""One benchmark run: both tools, step by step, on the same image."""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import dataset
from bench.measure import Sample, sha256_file
from bench.tools import Ec2Backup, Restic, Tool

STEPS = ("full", "incremental", "restore")
# The informational full: ec2backup into a repository made with this zstd level (the default
# is 3: storage outweighs CPU on AWS, see docs/repository-format.md).
FAST_LEVEL = 1
# Above this 1-minute load average other processes compete for the 2 vCPUs: say so.
BUSY_LOAD = 1.0


@dataclass
class ToolRun:
    samples: dict[str, Sample] = field(default_factory=dict)
    repo_after_full: int = 0
    repo_after_incremental: int = 0
    restore_verified: bool = False
    # restic does not fsync what it restores (ec2backup does, before its atomic rename): the
    # time a `sync` right after the restore takes is what restic left for the kernel to write.
    restore_sync_s: float = 0.0
    # ec2backup only: a full at FAST_LEVEL into its own repository, and that repository's size
    full_fast: Sample | None = None
    repo_fast: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "steps": {k: v.as_dict() for k, v in self.samples.items()},
            "repo_bytes_after_full": self.repo_after_full,
            "repo_bytes_after_incremental": self.repo_after_incremental,
            "restore_sha256_ok": self.restore_verified,
            "sync_after_restore_s": round(self.restore_sync_s, 3),
            **(
                {
                    f"full_zstd{FAST_LEVEL}": self.full_fast.as_dict(),
                    f"repo_bytes_after_full_zstd{FAST_LEVEL}": self.repo_fast,
                }
                if self.full_fast is not None
                else {}
            ),
        }


@dataclass
class RunResult:
    image: dataset.ImageInfo
    mutation: dataset.Mutation
    order: list[str]
    tools: dict[str, ToolRun]
    image_sha256: str
    setup_s: float
    load_before: tuple[float, float, float]

    def as_dict(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "image_sha256_day1": self.image_sha256,
            "setup_s": round(self.setup_s, 2),
            "load_average_before": [round(x, 2) for x in self.load_before],
            "tools": {k: v.as_dict() for k, v in self.tools.items()},
        }


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_once(
    work: Path, size_gib: float, ec2backup_exe: str, restic_exe: str, restic_first: bool
) -> RunResult:
    """Generate, full x2, mutate, incremental x2, restore x2 (+ sha256 checks).

    The tools alternate step by step; `restic_first` flips who goes first so that, over several
    runs, neither always meets the disk (or the neighbours on this shared VM) in the same state.
    """
    load = os.getloadavg()
    if load[0] > BUSY_LOAD:
        _say(f"warning: load average {load[0]:.1f} on {os.cpu_count()} CPUs: figures will be noisy")
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    t0 = time.perf_counter()
    image_path = work / "disk.img"
    image = dataset.generate(image_path, size_gib)
    _say(
        f"image: {image.size / 2**30:g} GiB, {image.blocks} blocks: {image.zero_blocks} zero "
        f"(holes), {image.text_blocks} text, {image.random_blocks} random, "
        f"{image.extents} extents ({time.perf_counter() - t0:.1f}s)"
    )
    contenders: list[Tool] = [Ec2Backup(work, ec2backup_exe), Restic(work, restic_exe)]
    if restic_first:
        contenders.reverse()
    runs = {t.name: ToolRun() for t in contenders}
    for t in contenders:
        t.init()
    setup = time.perf_counter() - t0

    for t in contenders:
        runs[t.name].samples["full"] = s = t.full(image_path)
        runs[t.name].repo_after_full = t.repo_bytes()
        _say(
            f"  {t.name:<10} full         {s.wall_s:6.2f}s  {image.size / s.wall_s / 1e6:6.0f} MB/s"
        )

    for t in contenders:
        if isinstance(t, Ec2Backup):
            fast, runs[t.name].repo_fast = t.full_at_level(image_path, FAST_LEVEL)
            runs[t.name].full_fast = fast
            _say(
                f"  {t.name:<10} full zstd-{FAST_LEVEL}  {fast.wall_s:6.2f}s  "
                f"{image.size / fast.wall_s / 1e6:6.0f} MB/s  (informational)"
            )

    t1 = time.perf_counter()
    mutation = dataset.mutate(image_path)
    digest = sha256_file(image_path)
    setup += time.perf_counter() - t1
    _say(
        f"mutate: {len(mutation.changed)} blocks changed ({mutation.new_text} text, "
        f"{mutation.new_random} random, {mutation.partial} partial); sha256 {digest[:12]}"
    )

    for t in contenders:
        runs[t.name].samples["incremental"] = s = t.incremental(image_path, mutation.changed_list)
        runs[t.name].repo_after_incremental = t.repo_bytes()
        _say(f"  {t.name:<10} incremental  {s.wall_s:6.2f}s")

    for t in contenders:
        dest = work / f"restore-{t.name}"
        sample, restored = t.restore(dest, image_path)
        runs[t.name].samples["restore"] = sample
        t2 = time.perf_counter()
        os.sync()
        runs[t.name].restore_sync_s = time.perf_counter() - t2
        runs[t.name].restore_verified = ok = sha256_file(restored) == digest
        shutil.rmtree(dest)  # restic's copy is not sparse: 2 GiB of disk
        setup += time.perf_counter() - t2
        _say(
            f"  {t.name:<10} restore      {sample.wall_s:6.2f}s  "
            f"{image.size / sample.wall_s / 1e6:6.0f} MB/s  sha256 {'ok' if ok else 'MISMATCH'}  "
            f"(sync after: {runs[t.name].restore_sync_s:.2f}s)"
        )
    return RunResult(
        image=image,
        mutation=mutation,
        order=[t.name for t in contenders],
        tools=runs,
        image_sha256=digest,
        setup_s=setup,
        load_before=load,
    )

"""Measuring one child process: wall time, CPU time and peak RSS, with a cold page cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

DROP_CACHES = Path("/proc/sys/vm/drop_caches")
PROC_STAT = Path("/proc/stat")
# Hash buffer: big reads keep sha256 (SHA-NI, ~1.7 GB/s) busy rather than the syscalls.
HASH_CHUNK = 8 * 1024 * 1024


@dataclass(frozen=True)
class Sample:
    """One step of one tool: what `/usr/bin/time -v` would print for it."""

    wall_s: float
    user_s: float
    sys_s: float
    max_rss_mib: float
    # CPU cores that other processes (other users of this shared VM) kept busy during the step:
    # with 2 vCPUs, anything near 1 means the step ran on about half the machine.
    others_cores: float = 0.0

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s

    def as_dict(self) -> dict[str, float]:
        return {**asdict(self), "cpu_s": self.cpu_s}


class StepFailed(RuntimeError):
    pass


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine spent busy since boot (all cores; 0 if unknown)."""
    try:
        fields = PROC_STAT.read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return 0.0
    ticks = [int(x) for x in fields]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def drop_page_cache() -> bool:
    """Flush dirty pages and empty the page cache (as root); False when not permitted."""
    os.sync()
    try:
        DROP_CACHES.write_text("3\n")
    except OSError:
        return False
    return True


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    cold: bool = True,
    warm_code: Sequence[str] | None = None,
) -> tuple[Sample, str]:
    """Run argv to completion; its rusage comes from wait4 on that very pid (not a delta of
    RUSAGE_CHILDREN, which would mix in other children). Returns (sample, stdout).

    cold: empty the page cache first, so the data (image, repository) is read from disk.
    warm_code: then run this command (e.g. `tool --help`), unmeasured, to load the tool's own
    executable and libraries again: an installed backup tool runs every day, its code is
    usually cached while the data it reads is not.
    """
    if cold:
        drop_page_cache()
    if warm_code is not None:
        subprocess.run(warm_code, env=env, capture_output=True, check=False)
    log.parent.mkdir(parents=True, exist_ok=True)
    out_path = log.with_suffix(".stdout")
    with open(out_path, "wb") as out, open(log, "wb") as err:
        busy0 = busy_cpu_seconds()
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        busy = busy_cpu_seconds() - busy0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = out_path.read_text()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-2000:]
        raise StepFailed(f"{' '.join(argv)} exited {proc.returncode}; stderr tail:\n{tail}")
    sample = Sample(
        wall_s=wall,
        user_s=usage.ru_utime,
        sys_s=usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,  # Linux reports KiB
        others_cores=max(0.0, busy - usage.ru_utime - usage.ru_stime) / wall,
    )
    return sample, stdout


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(HASH_CHUNK)
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def tree_bytes(root: Path) -> int:
    """Apparent size (st_size) of every file under root: what a repository costs to store."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total

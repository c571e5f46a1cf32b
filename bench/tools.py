"""The two contenders, driven through their command lines exactly as a user would."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Protocol

from bench.measure import Sample, run_measured, tree_bytes

# Any fixed password: both tools derive keys from it with their own KDF, both encrypt.
PASSWORD = "bench-password-not-secret"
# Repository format v2 (compression) appeared in restic 0.14; Debian bookworm ships 0.14.0.
RESTIC_MIN_VERSION = (0, 14)


class SetupError(RuntimeError):
    pass


def _apt_install(package: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", package]
    if subprocess.run(install, env=env, capture_output=True).returncode == 0:
        return
    update = subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
    res = subprocess.run(install, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        detail = (res.stderr or res.stdout).strip().splitlines()[-3:]
        raise SetupError(
            f"`apt-get install -y {package}` failed (apt-get update exit {update.returncode}): "
            + " | ".join(detail)
        )


def ensure_restic() -> tuple[str, str]:
    """Path and version of restic, installing Debian's package when it is missing."""
    path = shutil.which("restic")
    if path is None:
        if shutil.which("apt-get") is None:
            raise SetupError("restic is not on PATH and there is no apt-get to install it")
        if os.geteuid() != 0:
            raise SetupError("restic is not on PATH; install it: sudo apt-get install -y restic")
        print("restic not found: apt-get install -y restic ...", file=sys.stderr)
        _apt_install("restic")
        path = shutil.which("restic")
        if path is None:
            raise SetupError("apt-get installed restic but it is still not on PATH")
    out = subprocess.run([path, "version"], capture_output=True, text=True).stdout
    m = re.search(r"restic (\d+)\.(\d+)\.(\d+)", out)
    if m is None:
        raise SetupError(f"cannot parse `restic version`: {out!r}")
    if (int(m[1]), int(m[2])) < RESTIC_MIN_VERSION:
        raise SetupError(f"restic {m[0]} is too old: repository v2 needs 0.14+")
    return path, m[0].split()[1]


def find_ec2backup() -> str:
    """The venv's console script (the Makefile puts .venv/bin first on PATH)."""
    beside = Path(sys.executable).parent / "ec2backup"
    if beside.exists():
        return str(beside)
    found = shutil.which("ec2backup")
    if found is None:
        raise SetupError("ec2backup is not installed: run `make venv`")
    return found


class Tool(Protocol):
    name: str
    repo: Path

    def init(self) -> None: ...
    def full(self, image: Path) -> Sample: ...
    def incremental(self, image: Path, changed_list: Path) -> Sample: ...
    def restore(self, dest: Path, image: Path) -> tuple[Sample, Path]: ...

    def repo_bytes(self) -> int: ...


class Ec2Backup:
    name = "ec2backup"

    def __init__(self, work: Path, exe: str) -> None:
        self.exe = exe
        self.repo = work / "repo-ec2backup"
        self.logs = work / "logs"
        self.env = {**os.environ, "EC2BACKUP_REPO_PASSWORD": PASSWORD}
        self.points: list[str] = []

    def _run(
        self, step: str, *args: str, cold: bool = True, repo: Path | None = None
    ) -> tuple[Sample, str]:
        return run_measured(
            [self.exe, *args, "--repo", str(repo or self.repo)],
            env=self.env,
            log=self.logs / f"{self.name}-{step}.log",
            cold=cold,
            warm_code=[self.exe, "--help"],  # imports every command's modules
        )

    def init(self) -> None:
        self._run("init", "repo", "init", cold=False)

    def full(self, image: Path) -> Sample:
        sample, out = self._run("full", "image", "backup", str(image))
        self.points.append(out.strip().splitlines()[-1])
        return sample

    def full_at_level(self, image: Path, level: int) -> tuple[Sample, int]:
        """A full into a repository of its own made with `repo init --compression-level`
        (informational: what an operator who trades storage for speed gets); its size, and
        the repository removed again."""
        repo = self.repo.with_name(f"{self.repo.name}-zstd{level}")
        shutil.rmtree(repo, ignore_errors=True)
        self._run(
            f"init-zstd{level}", "repo", "init", "--compression-level", str(level),
            cold=False, repo=repo,
        )  # fmt: skip
        sample, _ = self._run(f"full-zstd{level}", "image", "backup", str(image), repo=repo)
        size = tree_bytes(repo)
        shutil.rmtree(repo)
        return sample, size

    def incremental(self, image: Path, changed_list: Path) -> Sample:
        sample, out = self._run(
            "incremental",
            "image",
            "backup",
            str(image),
            "--parent",
            self.points[-1],
            "--changed-blocks",
            str(changed_list),
        )
        self.points.append(out.strip().splitlines()[-1])
        return sample

    def restore(self, dest: Path, image: Path) -> tuple[Sample, Path]:
        dest.mkdir(parents=True, exist_ok=True)
        target = dest / "restored.img"
        sample, _ = self._run(
            "restore", "image", "restore", self.points[-1], "--output", str(target)
        )
        return sample, target

    def repo_bytes(self) -> int:
        return tree_bytes(self.repo)


class Restic:
    name = "restic"

    def __init__(self, work: Path, exe: str) -> None:
        self.exe = exe
        self.repo = work / "repo-restic"
        self.cache = work / "restic-cache"  # its normal local cache, kept out of $HOME
        self.logs = work / "logs"
        self.env = {**os.environ, "RESTIC_PASSWORD": PASSWORD}
        # one static binary: reading it whole puts all of its code back in the page cache
        self.warm = ["sh", "-c", f"cat {shlex.quote(exe)} >/dev/null && {shlex.quote(exe)} version"]

    def _argv(self, *args: str) -> list[str]:
        return [self.exe, "--repo", str(self.repo), "--cache-dir", str(self.cache), *args]

    def init(self) -> None:
        run_measured(
            self._argv("init", "--repository-version", "2"),
            env=self.env,
            log=self.logs / f"{self.name}-init.log",
            cold=False,
        )

    def _backup(self, step: str, image: Path) -> Sample:
        # No --parent: restic picks the previous snapshot of the same path itself, sees the
        # changed mtime and re-reads (and re-chunks) the whole file, as it must.
        sample, _ = run_measured(
            self._argv("backup", "--compression", "auto", str(image)),
            env=self.env,
            log=self.logs / f"{self.name}-{step}.log",
            warm_code=self.warm,
        )
        return sample

    def full(self, image: Path) -> Sample:
        return self._backup("full", image)

    def incremental(self, image: Path, changed_list: Path) -> Sample:
        return self._backup("incremental", image)

    def restore(self, dest: Path, image: Path) -> tuple[Sample, Path]:
        sample, _ = run_measured(
            self._argv("restore", "latest", "--target", str(dest)),
            env=self.env,
            log=self.logs / f"{self.name}-restore.log",
            warm_code=self.warm,
        )
        # restic recreates the absolute source path under the target
        return sample, dest / str(image.resolve()).lstrip("/")

    def repo_bytes(self) -> int:
        return tree_bytes(self.repo)

"""Helpers for the repository tests: CLI runners (in-process and subprocess), buckets, objects."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
PASSWORD = "correct horse battery staple"
# Small packs in tests so that a few MiB of image spans several packs (multipart is exercised
# separately in test_repo_backend.py).
TEST_PACK_MIB = 1


@dataclass
class CliResult:
    code: int
    out: str
    err: str

    @property
    def last_line(self) -> str:
        lines = self.out.strip().splitlines()
        return lines[-1] if lines else ""


def run_inproc(*args: str) -> CliResult:
    """Run `ec2backup ARGS` in this process (fast); returns exit code and captured output."""
    from ec2backup.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in args])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "ec2backup.cli", *[str(a) for a in args]]


def run_sub(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> CliResult:
    p = subprocess.run(
        cli_cmd(*args),
        env=env or dict(os.environ),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return CliResult(p.returncode, p.stdout, p.stderr)


def make_bucket(lab_aws, versioned: bool = True) -> str:  # type: ignore[no-untyped-def]
    s3 = lab_aws.client("s3")
    name = f"repo-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    if versioned:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": "Enabled"})
    return name


def open_repo(url: str):  # type: ignore[no-untyped-def]
    from ec2backup.repository.repo import Repository

    return Repository.open(url, PASSWORD.encode())


def list_objects(url: str) -> dict[str, int]:
    """Every object name -> size (for 'nothing was written' assertions)."""
    from ec2backup.repository.backend import open_backend

    return dict(open_backend(url).list(""))


def rewrite_config(repo, **update):  # type: ignore[no-untyped-def]
    """Replace the repository's config by one with these fields changed, authenticated by the
    repository's key (as an older program, or one with other parameters, would have written)."""
    from ec2backup.repository.repo import CONFIG_NAME, config_bytes

    config = repo.config.model_copy(update=update).signed(repo._master)
    repo.backend.put(CONFIG_NAME, [config_bytes(config)])
    return config

"""`ec2backup worker-image publish`: the wheelhouse worker user-data installs the agent from.

A wheelhouse is a flat S3 prefix of wheels: the product's own and every dependency, built for
the workers' platform (manylinux, CPython 3.11, the architecture of their instance types), plus
`SHA256SUMS`. User-data copies it to the instance and installs with `pip --no-index`, so a
worker needs no package index and no internet access, only S3 (a gateway endpoint). The URL to
configure is `s3://BUCKET/PREFIX/<version>/<arch>/` (`[worker] wheelhouse_url`).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib.metadata import version as installed_version
from pathlib import Path

from ec2backup.errors import UserError

# manylinux tags pip may pick for the workers (Amazon Linux 2023: glibc 2.34).
PLATFORMS = {
    "x86_64": ["manylinux_2_34_x86_64", "manylinux2014_x86_64", "manylinux_2_17_x86_64"],
    "arm64": ["manylinux_2_34_aarch64", "manylinux2014_aarch64", "manylinux_2_17_aarch64"],
}
WORKER_PYTHON = "3.11"
CHECKSUMS = "SHA256SUMS"


def project_root() -> Path | None:
    """The checkout this package runs from (where `pyproject.toml` is), if any."""
    root = Path(__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").exists() else None


def _pip(args: list[str], what: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise UserError(f"{what} failed: {last[-1] if last else done.returncode}")


def build(
    out: Path,
    arch: str,
    wheel: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> list[Path]:
    """Fill `out` with the product wheel and its dependencies' wheels for `arch`."""
    if arch not in PLATFORMS:
        raise UserError(f"--arch: must be one of {', '.join(PLATFORMS)}")
    if wheel is None:
        root = project_root()
        if root is None:
            raise UserError("--wheel: not running from a checkout; give the ec2backup wheel")
        progress(f"building the ec2backup wheel from {root}")
        _pip(["wheel", "--no-deps", "-q", "-w", str(out), str(root)], "building the wheel")
        wheels = sorted(out.glob("ec2backup-*.whl"))
        if not wheels:
            raise UserError("building the wheel produced no ec2backup-*.whl")
        wheel = wheels[-1]
    elif not wheel.exists():
        raise UserError(f"--wheel: {wheel} does not exist")
    progress(f"downloading dependencies for {arch} (CPython {WORKER_PYTHON})")
    platform_args = [arg for p in PLATFORMS[arch] for arg in ("--platform", p)]
    _pip(
        [
            "download",
            "-q",
            "--only-binary=:all:",
            *platform_args,
            "--python-version",
            WORKER_PYTHON,
            "--implementation",
            "cp",
            "-d",
            str(out),
            str(wheel),
        ],
        "downloading the dependencies",
    )
    files = sorted(p for p in out.iterdir() if p.suffix == ".whl")
    sums = "".join(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n" for p in files)
    (out / CHECKSUMS).write_text(sums)
    return [*files, out / CHECKSUMS]


def publish(
    to: str,
    arch: str,
    wheel: Path | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> str:
    """Build the wheelhouse and upload it under `to`; returns the `wheelhouse_url`."""
    from ec2backup import aws

    if not to.startswith("s3://"):
        raise UserError("--to: must be s3://BUCKET[/PREFIX]")
    bucket, _, prefix = to.removeprefix("s3://").partition("/")
    if not bucket:
        raise UserError("--to: no bucket")
    version = installed_version("ec2backup")
    key_prefix = "/".join(p for p in (prefix.strip("/"), version, arch) if p) + "/"
    with tempfile.TemporaryDirectory(prefix="ec2backup-wheelhouse-") as tmp:
        files = build(Path(tmp), arch, wheel, progress)
        region = aws.default_region() or "us-east-1"
        s3 = aws.client("s3", region)
        for i, path in enumerate(files, 1):
            progress(f"uploading {i}/{len(files)} {path.name}")
            # one PUT each: the largest wheel is some 20 MB, far below the 5 GB PUT limit
            s3.put_object(Bucket=bucket, Key=key_prefix + path.name, Body=path.read_bytes())
    return f"s3://{bucket}/{key_prefix}"

"""Shared fixtures: the real lab AWS endpoint (subprocess, over HTTP) and the full lab."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
from botocore.config import Config

REPO_ROOT = Path(__file__).resolve().parent.parent

# pytest-xdist's workers get the controller's terminal size as COLUMNS/LINES; the CLI's tables
# honour COLUMNS (ec2backup/cli/format.py), so commands run by tests would fold their rows to
# that width under `make test` and not when a test runs alone.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@dataclass
class LabAws:
    """A running lab endpoint: build boto3 clients against it."""

    url: str
    dir: Path
    region: str = "us-east-1"

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": self.region,
            "EC2BACKUP_LAB_URL": self.url,
        }

    def client(self, service: str, region: str | None = None, **creds: str):  # type: ignore[no-untyped-def]
        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=region or self.region,
            aws_access_key_id=creds.get("aws_access_key_id", "testing"),
            aws_secret_access_key=creds.get("aws_secret_access_key", "testing"),
            aws_session_token=creds.get("aws_session_token"),
            config=Config(retries={"total_max_attempts": 1}, s3={"addressing_style": "path"}),
        )


@pytest.fixture(scope="session")
def lab_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabAws]:
    """The lab AWS endpoint alone (no Temporal), as a subprocess on a free port."""
    lab_dir = tmp_path_factory.mktemp("lab-aws")
    port = free_port()
    log = open(lab_dir / "server.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ec2backup_lab.server",
            "--dir",
            str(lab_dir),
            "--port",
            str(port),
            "--snapshot-pending-seconds",
            "0.5",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/_lab/health")
        yield LabAws(url=url, dir=lab_dir)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture
def aws_env(lab_aws: LabAws, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Point boto3 (and CLI subprocesses that inherit os.environ) at the lab."""
    env = lab_aws.env()
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **env}


@dataclass
class Lab:
    """A full lab from `ec2backup lab up --detach`: Temporal dev server + AWS endpoint."""

    dir: Path
    aws_url: str
    temporal_address: str
    ui_url: str
    env: dict[str, str]

    def cli(
        self, *args: str, check: bool = True, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run `ec2backup ARGS...` against this lab; returns the completed process."""
        result = subprocess.run(
            [sys.executable, "-m", "ec2backup.cli", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO_ROOT,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"ec2backup {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def client(self, service: str, region: str = "us-east-1", **creds: str):  # type: ignore[no-untyped-def]
        return LabAws(url=self.aws_url, dir=self.dir).client(service, region, **creds)

    def use_payload_keys(self, home_region: str = "us-east-1") -> None:
        """Give this (test) process the lab installation's Temporal payload keys, read as any
        client reads them, from the installation secret (ec2backup.payloads). Read afresh on
        every call: a test may rotate them."""
        import json

        from ec2backup import installation, payloads

        secret = self.client("secretsmanager", home_region).get_secret_value(
            SecretId=installation.INSTALLATION_SECRET
        )
        doc = json.loads(secret["SecretString"])
        payloads.use_keyring(payloads.keyring_from_secret(doc, self.client("kms", home_region)))


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """One full lab for the test session, started through the real CLI."""
    lab_dir = tmp_path_factory.mktemp("lab")
    aws_port, temporal_port, ui_port = free_port(), free_port(), free_port()
    base_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "TEMPORAL_", "EC2BACKUP_"))
    }
    base_env["EC2BACKUP_LAB_DIR"] = str(lab_dir)
    up = subprocess.run(
        [
            sys.executable,
            "-m",
            "ec2backup.cli",
            "lab",
            "up",
            "--detach",
            "--dir",
            str(lab_dir),
            "--aws-port",
            str(aws_port),
            "--temporal-port",
            str(temporal_port),
            "--ui-port",
            str(ui_port),
            "--snapshot-pending-seconds",
            "0.5",
            # AWS's defaults, given explicitly so the flags are exercised (test_lab_credentials)
            "--role-session-seconds",
            "3600",
            "--start-snapshot-unknown-seconds",
            "2",
        ],
        env=base_env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO_ROOT,
    )
    assert up.returncode == 0, up.stdout + up.stderr
    env = {
        **base_env,
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{aws_port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "TEMPORAL_ADDRESS": f"127.0.0.1:{temporal_port}",
        "EC2BACKUP_LAB_URL": f"http://127.0.0.1:{aws_port}",
        # the installation configuration `lab up` wrote for itself
        "EC2BACKUP_CONFIG": str(lab_dir / "ec2backup.toml"),
    }
    try:
        yield Lab(
            dir=lab_dir,
            aws_url=env["AWS_ENDPOINT_URL"],
            temporal_address=env["TEMPORAL_ADDRESS"],
            ui_url=f"http://127.0.0.1:{ui_port}",
            env=env,
        )
    finally:
        subprocess.run(
            [sys.executable, "-m", "ec2backup.cli", "lab", "down", "--dir", str(lab_dir)],
            env=base_env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO_ROOT,
        )

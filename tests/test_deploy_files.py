"""The deployment files: docker-compose.yml, Dockerfile, deploy/config.example.toml.

Pure checks (no Docker, no lab); `docker compose config` runs only where Docker Compose is
installed.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from ec2backup import config

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
EXAMPLE_CONFIG = ROOT / "deploy" / "config.example.toml"

SERVICES = {"postgresql", "temporal", "temporal-ui", "orchestrator", "lab"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(data, dict)
    return data


def _services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    assert isinstance(services, dict)
    return services


def _project_version() -> str:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    return str(version)


def _pinned(image: str) -> bool:
    """An explicit tag with a version number in it (not `latest`, not a bare name)."""
    if "@sha256:" in image:
        return True
    name, _, tag = image.rpartition(":")
    if not name or "/" in tag:  # no tag at all (a registry port is not a tag)
        return False
    return tag != "latest" and bool(re.search(r"\d", tag))


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    assert isinstance(env, dict)
    return env


def test_pinned_helper() -> None:
    assert _pinned("postgres:16.4")
    assert _pinned("temporalio/auto-setup:1.29.1")
    assert _pinned("registry.example:5000/x/y:2.0")
    assert not _pinned("postgres")
    assert not _pinned("postgres:latest")
    assert not _pinned("registry.example:5000/x/y")
    assert not _pinned("python:slim")


def test_compose_has_the_services() -> None:
    assert set(_services()) >= SERVICES


def test_every_image_is_pinned() -> None:
    services = _services()
    for name, service in services.items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name}: neither image nor build"
            continue
        assert _pinned(str(image)), f"{name}: image {image!r} is not pinned to a version"
    assert "latest" not in COMPOSE.read_text()


def test_lab_is_an_optional_profile_and_nothing_else_is() -> None:
    services = _services()
    assert services["lab"].get("profiles") == ["lab"]
    for name in SERVICES - {"lab"}:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    assert services["lab"]["build"]["target"] == "lab"
    command = services["lab"]["command"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert command[command.index("--port") + 1] == "4566"


def test_orchestrator_is_built_from_the_dockerfile() -> None:
    orchestrator = _services()["orchestrator"]
    build = orchestrator["build"]
    assert build["context"] == "."
    assert build.get("dockerfile", "Dockerfile") == "Dockerfile"
    assert build["target"] == "product"
    assert orchestrator["command"] == ["worker"]
    # The images built here carry the project's version.
    version = _project_version()
    assert orchestrator["image"] == f"ec2backup:{version}"
    assert _services()["lab"]["image"] == f"ec2backup-lab:{version}"

    env = _environment(orchestrator)
    assert env["TEMPORAL_ADDRESS"] == "temporal:7233"
    assert "TEMPORAL_NAMESPACE" in env
    assert env["EC2BACKUP_CONFIG"] == "/etc/ec2backup/config.toml"
    targets = {v["target"]: v for v in orchestrator["volumes"] if isinstance(v, dict)}
    assert targets["/etc/ec2backup/config.toml"]["read_only"] is True
    assert targets["/home/ec2backup/.aws"]["read_only"] is True
    # Never a fixed endpoint: AWS_ENDPOINT_URL only passes through from the shell.
    assert env.get("AWS_ENDPOINT_URL") is None


def test_temporal_runs_on_postgresql() -> None:
    services = _services()
    temporal = services["temporal"]
    env = _environment(temporal)
    assert env["DB"] == "postgres12"
    assert env["POSTGRES_SEEDS"] == "postgresql"
    assert temporal["depends_on"]["postgresql"]["condition"] == "service_healthy"
    assert "healthcheck" in services["postgresql"]
    assert "healthcheck" in temporal
    for name in ("temporal-ui", "orchestrator"):
        assert services[name]["depends_on"]["temporal"]["condition"] == "service_healthy"
    assert any("8080" in str(port) for port in services["temporal-ui"]["ports"])


def _dockerfile_stages() -> list[tuple[str, str | None]]:
    """(base, stage name) of every FROM line."""
    stages = []
    for line in DOCKERFILE.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "FROM":
            args = [w for w in words[1:] if not w.startswith("--")]
            name = args[2] if len(args) >= 3 and args[1].upper() == "AS" else None
            stages.append((args[0], name))
    return stages


def test_dockerfile_bases_are_pinned() -> None:
    stages = _dockerfile_stages()
    assert stages
    seen: set[str] = set()
    for base, name in stages:
        if base not in seen:  # an earlier stage needs no tag
            assert "$" not in base, f"FROM {base}: no build-arg bases"
            assert _pinned(base), f"FROM {base} is not pinned"
            assert base.startswith("python:3.11"), base
        if name:
            seen.add(name)
    assert {"product", "lab"} <= seen
    # The default target (the last stage) is the product, not the lab.
    assert stages[-1][1] == "product"


def test_dockerfile_installs_the_product_without_the_lab() -> None:
    text = DOCKERFILE.read_text()
    assert "/opt/ec2backup/bin/pip install .\n" in text
    assert "'.[lab]'" in text
    assert 'ENTRYPOINT ["ec2backup"]' in text
    assert 'CMD ["worker"]' in text
    # The product stage runs as a non-root user.
    product = text[text.index("AS product") :]
    assert "USER ec2backup" in product


def test_dockerignore_keeps_the_context_small() -> None:
    lines = set((ROOT / ".dockerignore").read_text().splitlines())
    assert {".venv", ".lab", "tests/", "bench/out", ".git"} <= lines


def test_example_configuration_validates() -> None:
    with EXAMPLE_CONFIG.open("rb") as f:
        data = tomllib.load(f)
    cfg = config.parse(data, str(EXAMPLE_CONFIG))
    assert cfg.home_region in cfg.regions
    # Every Region has a worker subnet of its own (subnets are regional).
    for region in cfg.regions:
        assert cfg.workers[region].subnet_id, region
    assert cfg.accounts and all(a.external_id for a in cfg.accounts)
    assert cfg.repositories


@pytest.mark.skipif(shutil.which("docker") is None, reason="docker is not installed")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    try:
        version = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("docker compose is not usable here")
    if version.returncode != 0:
        pytest.skip("docker compose is not installed")
    # The orchestrator's configuration file must exist (the bind mount refuses to create it).
    config_file = tmp_path / "config.toml"
    config_file.write_text(EXAMPLE_CONFIG.read_text())
    result = subprocess.run(
        ["docker", "compose", "-f", str(COMPOSE), "config", "-q"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={
            **os.environ,
            "EC2BACKUP_CONFIG_FILE": str(config_file),
            "EC2BACKUP_AWS_DIR": str(tmp_path),
        },
    )
    assert result.returncode == 0, result.stderr


SMOKE = ROOT / "tests" / "smoke_aws.py"


def _smoke(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "EC2BACKUP_"))}
    return subprocess.run(
        [sys.executable, str(SMOKE)],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_smoke_aws_refuses_the_lab_and_missing_variables() -> None:
    real = {
        "EC2BACKUP_SMOKE_INSTANCE_ID": "i-0123456789abcdef0",
        "EC2BACKUP_SMOKE_REGION": "eu-west-1",
    }
    for env, says in [
        ({}, "missing EC2BACKUP_SMOKE_INSTANCE_ID, EC2BACKUP_SMOKE_REGION"),
        ({"EC2BACKUP_SMOKE_REGION": "eu-west-1"}, "missing EC2BACKUP_SMOKE_INSTANCE_ID"),
        ({**real, "AWS_ENDPOINT_URL": "http://127.0.0.1:4566"}, "AWS_ENDPOINT_URL is set"),
        ({**real, "AWS_ENDPOINT_URL_EC2": "http://127.0.0.1:4566"}, "AWS_ENDPOINT_URL_EC2"),
        ({**real, "EC2BACKUP_SMOKE_INSTANCE_ID": "web-1"}, "must be an instance id"),
    ]:
        result = _smoke(env)
        assert result.returncode == 2, (env, result.stdout, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and says in lines[0], (env, result.stderr)


def test_smoke_aws_is_not_collected_by_pytest() -> None:
    assert not SMOKE.name.startswith("test_") and not SMOKE.stem.endswith("_test")

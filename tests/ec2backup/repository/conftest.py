"""Fixtures for the repository tests: a repository URL per backend (a local directory, or a
versioned S3 bucket in the lab), with the password in the environment."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from repo_helpers import PASSWORD, TEST_PACK_MIB, make_bucket, run_inproc


@pytest.fixture(autouse=True)
def _repo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EC2BACKUP_REPO_PASSWORD", PASSWORD)
    monkeypatch.setenv("EC2BACKUP_PROGRESS", "0")
    monkeypatch.delenv("EC2BACKUP_REPO", raising=False)


@pytest.fixture(params=["local", "s3"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def repo_url(backend_kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty repository location (not initialized) on the parametrized backend."""
    if backend_kind == "local":
        yield str(tmp_path / "repo")
        return
    lab_aws = request.getfixturevalue("lab_aws")
    request.getfixturevalue("aws_env")
    yield f"s3://{make_bucket(lab_aws)}/backups/r1"


@pytest.fixture
def init_repo(repo_url: str) -> str:
    """An initialized repository (password only, 1 MiB packs)."""
    res = run_inproc("repo", "init", "--repo", repo_url, "--pack-size-mib", str(TEST_PACK_MIB))
    assert res.code == 0, res.err
    return repo_url

"""S3 writes: conditional creates, one PUT per default pack, racing inits, the lifecycle rule
that aborts incomplete multipart uploads."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import PASSWORD, make_bucket

from ec2backup.archive.copy import open_or_create
from ec2backup.repository import backend as backend_mod
from ec2backup.repository.backend import LocalBackend, S3Backend, open_backend
from ec2backup.repository.repo import DEFAULT_PACK_SIZE, Repository, RepositoryExists

MIB = 1024 * 1024


def _calls(backend: S3Backend) -> list[str]:
    seen: list[str] = []

    def record(model: Any, **_: Any) -> None:
        seen.append(model.name)

    backend.client.meta.events.register("before-call.s3", record)
    return seen


@pytest.fixture
def bucket(lab_aws: Any, aws_env: dict[str, str]) -> str:
    return make_bucket(lab_aws)


def test_a_default_pack_goes_up_in_one_put(bucket: str) -> None:
    """A pack is sealed once it reaches the pack size, so it is a little over 16 MiB: that
    used to take the multipart path (create, 3 parts, complete: 5 requests instead of 1)."""
    s3 = open_backend(f"s3://{bucket}/r")
    assert isinstance(s3, S3Backend)
    calls = _calls(s3)
    s3.put("data/ab/pack", b"x" * (DEFAULT_PACK_SIZE + 600_000))
    assert calls == ["PutObject"]


@pytest.mark.parametrize("kind", ["local", "s3"])
@pytest.mark.parametrize("size", [1000, 12 * MIB])
def test_create_never_replaces_an_object(
    kind: str, size: int, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setattr(backend_mod, "MULTIPART_THRESHOLD", 6 * MIB)  # 12 MiB: multipart
    if kind == "s3":
        b: LocalBackend | S3Backend = S3Backend(request.getfixturevalue("bucket"), "r")
    else:
        b = LocalBackend(tmp_path / "r")
    first, second = b"a" * size, b"b" * size
    assert b.create("index/x", first) is True
    assert b.create("index/x", second) is False
    assert b.get("index/x") == first
    if isinstance(b, S3Backend):  # the losing multipart upload was aborted, not left billed
        assert not b.client.list_multipart_uploads(Bucket=b.bucket).get("Uploads")
    else:
        assert [n for n, _ in b.list("")] == ["index/x"]  # no temporary file left


def test_racing_inits_make_one_repository(bucket: str) -> None:
    url = f"s3://{bucket}/r"
    results: list[Repository | Exception] = []
    start = threading.Barrier(4)

    def init() -> None:
        start.wait()
        try:
            results.append(Repository.create(url, PASSWORD.encode()))
        except Exception as exc:
            results.append(exc)

    threads = [threading.Thread(target=init) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = [r for r in results if isinstance(r, Repository)]
    assert len(made) == 1, results
    assert all(isinstance(r, RepositoryExists) for r in results if r not in made)
    repo = Repository.open(url, PASSWORD.encode())
    assert repo.config.id == made[0].config.id
    assert len(list(repo.backend.list("keys/"))) == 1  # losers removed their key files


def test_parallel_first_archive_runs_share_one_archive(bucket: str) -> None:
    url = f"s3://{bucket}/archive"
    ids: list[str] = []
    start = threading.Barrier(3)

    def run() -> None:
        start.wait()
        ids.append(open_or_create(url, PASSWORD.encode(), "GLACIER").config.id)

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 3 and len(set(ids)) == 1


def test_init_sets_a_rule_that_aborts_incomplete_uploads(lab_aws: Any, bucket: str) -> None:
    s3 = lab_aws.client("s3")
    other = {
        "ID": "theirs",
        "Filter": {"Prefix": "logs/"},
        "Status": "Enabled",
        "Expiration": {"Days": 30},
    }
    s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": [other]})
    repo = Repository.create(f"s3://{bucket}/backups/a", PASSWORD.encode())
    assert "added lifecycle rule" in repo.created_note
    rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    ours = [r for r in rules if r["ID"] != "theirs"]
    assert [r["ID"] for r in rules if r["ID"] == "theirs"] == ["theirs"]  # kept
    assert len(ours) == 1 and ours[0]["Filter"]["Prefix"] == "backups/a/"
    assert ours[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 1
    # a second repository in the same bucket gets its own; one already covered gets none
    Repository.create(f"s3://{bucket}/backups/b", PASSWORD.encode())
    again = Repository.create(f"s3://{bucket}/backups/a/nested", PASSWORD.encode())
    assert "aborted by rule" in again.created_note
    assert len(s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]) == 3


def test_init_says_how_when_it_may_not_set_the_rule(bucket: str) -> None:
    from botocore.awsrequest import AWSResponse

    url = f"s3://{bucket}/r"
    b = open_backend(url)
    assert isinstance(b, S3Backend)

    class _Denied:
        def stream(self, **_: Any) -> Any:
            yield b"<Error><Code>AccessDenied</Code><Message>no</Message></Error>"

    def deny(request: Any, **_: Any) -> AWSResponse | None:
        if "lifecycle" in request.url:
            return AWSResponse(request.url, 403, {}, _Denied())
        return None

    b.client.meta.events.register_first("before-send.s3", deny)
    note = b.ensure_abort_multipart_rule()
    assert note.startswith("could not set a lifecycle rule (AccessDenied)")
    assert '"AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}' in note

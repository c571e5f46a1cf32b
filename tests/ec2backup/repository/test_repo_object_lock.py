"""Object Lock repositories (issue 17, repository-format.md §10): every object a restore point
needs is locked at least until its horizon, a shared object until the later one; prune after
forget succeeds and says what stays locked until when; check reports full coverage."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path
from typing import Any, Literal

import pytest
from repo_helpers import open_repo, rewrite_config, run_inproc
from repo_imagegen import make_image, mutate

from ec2backup.imagebackup import ObjectLockRequired, require_object_lock
from ec2backup.models.session import ImageBackupSpec
from ec2backup.repository import objectlock
from ec2backup.repository.backend import S3Backend
from ec2backup.repository.repo import ObjectLockSettings


def test_locks_follow_references_and_prune_reports_what_stays(
    lab_aws: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    s3 = lab_aws.client("s3")
    plain = f"plain-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=plain)
    refused = run_inproc("repo", "init", "--repo", f"s3://{plain}/r", "--object-lock", "governance")
    assert refused.code != 0 and "has no Object Lock" in refused.err
    assert not s3.list_objects_v2(Bucket=plain).get("Contents")  # nothing half-written

    bucket = f"locked-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url = f"s3://{bucket}/r"
    init = run_inproc(
        "repo", "init", "--repo", url, "--object-lock", "governance", "--lock-days", "10",
        "--pack-size-mib", "1",
    )  # fmt: skip
    assert init.code == 0, init.err
    img = tmp_path / "img"
    make_image(img, 40, seed=5, zero=0.1, text=0.3)
    first = run_inproc("image", "backup", str(img), "--repo", url)
    assert first.code == 0, first.err
    # the second restore point is kept longer (its writer's retention): what it shares with
    # the first must be locked to its own, later, horizon
    repo = open_repo(url)
    settings = ObjectLockSettings(mode="GOVERNANCE", days=40, margin_days=7)
    rewrite_config(repo, object_lock=settings)
    mutate(img, 4, seed=6)
    second = run_inproc("image", "backup", str(img), "--repo", url)
    assert second.code == 0, second.err
    repo = open_repo(url)
    backend = repo.backend
    assert isinstance(backend, S3Backend)
    points = dict(repo.list_restore_points())
    rp1, rp2 = sorted(points, key=lambda rid: points[rid].time)
    needed = {rid: set(objectlock.needed_objects(repo, rid, points[rid])) for rid in points}
    for rid, rp in points.items():
        assert rp.lock_until is not None
        for name in needed[rid]:
            mode, until = backend.retention(name)
            assert mode == "GOVERNANCE" and until is not None and until >= rp.lock_until, name
    assert points[rp2].lock_until > points[rp1].lock_until + dt.timedelta(days=29)  # type: ignore[operator]
    shared = {n for n in needed[rp1] & needed[rp2] if n.startswith("data/")}
    assert shared
    for name in shared:
        assert backend.retention(name)[1] >= points[rp2].lock_until  # type: ignore[operator]

    assert run_inproc("repo", "forget", rp1, "--repo", url).code == 0
    marked = run_inproc("repo", "prune", "--repo", url, "--grace-hours", "0")
    assert marked.code == 0, marked.err
    deleted = run_inproc("repo", "prune", "--repo", url, "--grace-hours", "0")
    assert deleted.code == 0, deleted.err
    assert "stay stored under Object Lock until" in deleted.err
    only_first = needed[rp1] - needed[rp2]
    assert any("locked until" in line and line.split(": ", 1)[1] in only_first
               for line in deleted.err.splitlines() if "locked until" in line)  # fmt: skip

    check = run_inproc("repo", "check", "--repo", url)
    assert check.code == 0, check.err
    assert "lock coverage: 100%" in check.err


def test_a_policy_that_requires_object_lock_refuses_other_repositories(
    lab_aws: Any, aws_env: dict[str, str], tmp_path: Path
) -> None:
    """`image_backup.object_lock`: a session's preparation refuses (before any worker) a
    repository without Object Lock, and a governance repository when compliance is asked."""
    plain = tmp_path / "plain"
    assert run_inproc("repo", "init", "--repo", str(plain)).code == 0
    bucket = f"locked-{uuid.uuid4().hex[:8]}"
    lab_aws.client("s3").create_bucket(Bucket=bucket, ObjectLockEnabledForBucket=True)
    url = f"s3://{bucket}/r"
    assert run_inproc("repo", "init", "--repo", url, "--object-lock", "governance").code == 0

    def required(repo_url: str, mode: Literal["governance", "compliance"]) -> None:
        require_object_lock(
            open_repo(repo_url), ImageBackupSpec(repository=repo_url, object_lock=mode)
        )

    required(url, "governance")
    with pytest.raises(ObjectLockRequired, match=r"requires Object Lock in compliance mode"):
        required(url, "compliance")
    with pytest.raises(ObjectLockRequired, match=r"has no Object Lock \(repo init --object-lock"):
        required(str(plain), "governance")
    require_object_lock(open_repo(str(plain)), ImageBackupSpec(repository=str(plain)))

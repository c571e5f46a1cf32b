"""The archive tier as a library (ec2backup.archive) against the lab's S3: packs in a Glacier
class, refused to plain reads, idempotent copies independent of the hot repository, retrieval
that takes several polls, and retention that respects the minimum storage duration."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from repo_helpers import PASSWORD, list_objects, make_bucket, open_repo
from repo_imagegen import make_image, sha256_file

from ec2backup.archive import copy as archive_copy
from ec2backup.archive import policy as archive_policy
from ec2backup.repository.image import backup_image, restore_image
from ec2backup.repository.prune import prune
from ec2backup.repository.repo import Repository, data_name

N_BLOCKS = 48


@pytest.fixture
def hot(lab_aws: Any, aws_env: dict[str, str], tmp_path: Path) -> dict[str, Any]:
    bucket = make_bucket(lab_aws)
    url = f"s3://{bucket}/hot"
    repo = Repository.create(url, PASSWORD.encode(), pack_size=1024 * 1024)
    image = tmp_path / "disk.img"
    digest = make_image(image, N_BLOCKS, seed=7)
    rp = backup_image(repo, image).restore_point
    return {"bucket": bucket, "url": url, "repo": repo, "rp": rp, "sha": digest, "lab": lab_aws}


def _archive(hot: dict[str, Any], storage_class: str = "GLACIER") -> Repository:
    return archive_copy.open_or_create(
        f"s3://{hot['bucket']}/archive", PASSWORD.encode(), storage_class
    )


def test_archive_copy_verify_and_retrieve(hot: dict[str, Any], tmp_path: Path) -> None:
    arc = _archive(hot)
    assert arc.config.data_storage_class == "GLACIER"
    assert arc.config.pack_size == archive_copy.ARCHIVE_PACK_SIZE
    copied = archive_copy.copy_restore_point(hot["repo"], hot["rp"], arc)
    assert not copied.already_archived and copied.blocks_copied > 0
    check = archive_copy.verify(arc, copied.restore_point_id)
    assert check.problems == []
    assert check.packs >= 1 and check.storage_classes == {"GLACIER": check.packs}
    assert check.objects_per_gib > 0

    # Every pack is in GLACIER and a plain read is refused; metadata stays readable.
    s3 = hot["lab"].client("s3")
    packs = [k for k in list_objects(arc.backend.location()) if k.startswith("data/")]
    assert len(packs) == check.packs
    for name in packs:
        head = s3.head_object(Bucket=hot["bucket"], Key=f"archive/{name}")
        assert head["StorageClass"] == "GLACIER"
        with pytest.raises(ClientError) as exc:
            s3.get_object(Bucket=hot["bucket"], Key=f"archive/{name}")
        assert exc.value.response["Error"]["Code"] == "InvalidObjectState"
    assert open_repo(arc.backend.location()).list_restore_points()

    # Archiving the same restore point again stores nothing new.
    before = list_objects(arc.backend.location())
    again = archive_copy.copy_restore_point(hot["repo"], hot["rp"], arc)
    assert again.already_archived and again.restore_point_id == copied.restore_point_id
    assert list_objects(arc.backend.location()) == before

    # Deleting the hot restore point (forget + prune) does not touch the archived one.
    hot_repo: Repository = hot["repo"]
    hot_repo.forget(hot["rp"])
    for _phase in ("mark", "delete"):
        with hot_repo.lock(exclusive=True, purpose="test prune"):
            prune(hot_repo, grace=dt.timedelta(0))
    assert not [k for k in list_objects(hot["url"]) if k.startswith("data/")]
    assert list_objects(arc.backend.location()) == before

    # Retrieval: requested once, in progress for a few polls, then the restore is exact.
    state = archive_copy.retrieval(arc, copied.restore_point_id, request=True, tier="Bulk")
    assert state.requested == state.packs and not state.ready
    polls = 1
    while not (state := archive_copy.retrieval(arc, copied.restore_point_id, request=True)).ready:
        assert state.requested == 0  # never asked twice
        polls += 1
        assert polls < 20
    assert polls >= 2, "the lab's retrieval completed at once"
    out = tmp_path / "restored.img"
    _rid, rp = arc.load_restore_point(copied.restore_point_id)
    restore_image(arc, rp.volumes[0], out)
    assert sha256_file(out) == hot["sha"]


def test_storage_class_and_tier_errors(hot: dict[str, Any]) -> None:
    _archive(hot, "DEEP_ARCHIVE")
    with pytest.raises(
        archive_copy.ArchiveError, match="stores packs in DEEP_ARCHIVE, not GLACIER"
    ):
        _archive(hot, "GLACIER")
    with pytest.raises(
        archive_copy.ArchiveError, match="--storage-class: STANDARD_IA is not one of"
    ):
        _archive(hot, "STANDARD_IA")
    with pytest.raises(archive_copy.ArchiveError, match="is not an archive repository"):
        archive_copy.open_or_create(hot["url"], PASSWORD.encode(), None)
    arc = _archive(hot, None)  # type: ignore[arg-type]
    rid = archive_copy.copy_restore_point(hot["repo"], hot["rp"], arc).restore_point_id
    with pytest.raises(archive_copy.ArchiveError, match="--retrieval-tier: Expedited"):
        archive_copy.retrieval(arc, rid, request=True, tier="Expedited")


def test_prune_keeps_packs_inside_the_minimum_duration(hot: dict[str, Any]) -> None:
    arc = _archive(hot)
    rid = archive_copy.copy_restore_point(hot["repo"], hot["rp"], arc).restore_point_id
    packs = sorted(arc.list_packs())
    now = dt.datetime.now(dt.UTC)
    young = archive_policy.young_packs(arc, now)
    assert set(young) == set(packs)
    assert all(89 < days_left <= 90 for _size, days_left in young.values())
    cost = archive_policy.early_deletion_cost(young, packs, "GLACIER")
    assert cost.packs == len(packs) and cost.bytes > 0 and cost.cost_usd > 0

    arc.forget(rid)
    with arc.lock(exclusive=True, purpose="test prune"):
        held = prune(arc, repack=False, may_delete=lambda pid: pid not in young)
    assert held.packs_deleted == 0
    assert sorted(arc.list_packs()) == packs  # nothing deleted early
    # 91 days later the same packs may go.
    later = archive_policy.young_packs(arc, now + dt.timedelta(days=91))
    assert later == {}
    with arc.lock(exclusive=True, purpose="test prune"):
        marked = prune(arc, repack=False, may_delete=lambda pid: pid not in later)
    assert marked.packs_marked == len(packs) and marked.packs_deleted == 0
    with arc.lock(exclusive=True, purpose="test prune"):
        gone = prune(
            arc, repack=False, may_delete=lambda pid: pid not in later, grace=dt.timedelta(0)
        )
    assert gone.packs_deleted == len(packs)
    assert not arc.list_packs()
    for pid in packs:
        assert not arc.backend.exists(data_name(pid))


def _tagged_point(repo: Repository, image: Path, policy: str, instance: str) -> str:
    """A hot restore point shaped like a session's (policy tag, ec2-instance source)."""
    from ec2backup.repository.image import allocated_blocks, image_size, read_blocks
    from ec2backup.repository.writer import BackupWriter, commit_restore_point

    fd = os.open(image, os.O_RDONLY)
    try:
        size = image_size(fd)
        writer = BackupWriter(repo, name="vol-1", size=size, inherit=False)
        try:
            for idx, data in read_blocks(fd, size, list(allocated_blocks(fd, size))):
                writer.add(idx, data)
            record = writer.finish()
        finally:
            writer.close()
    finally:
        os.close(fd)
    return commit_restore_point(
        repo,
        [record],
        source={"kind": "ec2-instance", "instance_id": instance},
        tags={"policy": policy},
    )


@pytest.mark.parametrize("allow", [False, True])
def test_archive_retention_and_early_deletion(
    hot: dict[str, Any], tmp_path: Path, allow: bool
) -> None:
    from ec2backup.policy import Policy

    url = f"s3://{hot['bucket']}/archive-ret"
    policy = Policy.model_validate(
        {
            "name": "ret",
            "selection": {"instance_ids": ["i-0123456789abcdef0"], "regions": ["us-east-1"]},
            "schedule": {"daily": ["03:00"]},
            "snapshots": {"retention": {"count": 1}},
            "image_backup": {"repository": hot["url"]},
            "archive": {
                "schedule": {"cron": "0 5 1 * *"},
                "repository": url,
                "retention": {"monthly": 1},
                "allow_early_deletion": allow,
                "prune_grace_hours": 0,
            },
        }
    )
    arc = archive_copy.open_or_create(url, PASSWORD.encode(), "GLACIER")
    ids = []
    for seed in (1, 2):  # two unrelated images: no shared blocks, separate packs
        image = tmp_path / f"d{seed}.img"
        make_image(image, 16, seed=100 + seed, zero=0.0)
        rid = _tagged_point(hot["repo"], image, "ret", "i-0123456789abcdef0")
        ids.append(archive_copy.copy_restore_point(hot["repo"], rid, arc).restore_point_id)
    first_packs = set(archive_copy.packs_of(arc, arc.load_restore_point(ids[0])[1].volumes))

    out = archive_policy.apply_retention(policy, dt.datetime.now(dt.UTC), PASSWORD)
    assert out.forgotten_restore_points == [ids[0]] and out.kept_restore_points == [ids[1]]
    assert out.young_packs == len(first_packs) and out.young_bytes > 0
    assert out.early_deletion_cost_usd > 0
    if allow:  # marked now, deleted by the next run's prune (grace 0 here)
        assert out.early_deleted and out.packs_marked == len(first_packs)
        assert first_packs <= set(arc.list_packs())
        later = archive_policy.apply_retention(policy, dt.datetime.now(dt.UTC), PASSWORD)
        assert later.packs_deleted == len(first_packs)
        assert not set(arc.list_packs()) & first_packs
    else:
        assert not out.early_deleted and out.packs_deleted == out.packs_marked == 0
        assert first_packs <= set(arc.list_packs())
        assert any("minimum storage duration" in n and "$" in n for n in out.notes)


class _Interrupted(Exception):
    pass


def test_interrupted_copy_resumes_from_its_checkpoint(
    hot: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A copy killed mid-way (here: its progress callback raises, as a cancelled activity
    does) resumes from the last checkpoint: fewer blocks copied again, same bytes restored."""
    monkeypatch.setattr(archive_copy, "ARCHIVE_CHECKPOINT_BLOCKS", 8)
    arc = _archive(hot)
    total = archive_copy.copy_restore_point(hot["repo"], hot["rp"], _scratch(hot)).blocks_copied
    seen = [0]

    def die_after_20(_n: int) -> None:
        seen[0] += 1
        if seen[0] == 20:
            raise _Interrupted()

    with pytest.raises(_Interrupted):
        archive_copy.copy_restore_point(
            hot["repo"], hot["rp"], arc, die_after_20, checkpoint_prefix="archive-test"
        )
    assert not arc.list_restore_points()  # nothing committed
    done = archive_copy.copy_restore_point(
        hot["repo"], hot["rp"], arc, checkpoint_prefix="archive-test"
    )
    assert done.blocks_resumed == 16  # two checkpoints of 8 blocks before the 20th block
    assert done.blocks_copied == total - 16
    assert not [n for n, _ in arc.backend.list("checkpoints/")]  # dropped at commit
    check = archive_copy.verify(arc, done.restore_point_id)
    assert check.problems == []
    archive_copy.retrieval(arc, done.restore_point_id, request=True)
    while not archive_copy.retrieval(arc, done.restore_point_id, request=True).ready:
        pass
    _rid, rp = arc.load_restore_point(done.restore_point_id)
    out = tmp_path / "resumed.img"
    restore_image(arc, rp.volumes[0], out)
    assert sha256_file(out) == hot["sha"]


def _scratch(hot: dict[str, Any]) -> Repository:
    """Another archive, to count the blocks a full copy writes."""
    return archive_copy.open_or_create(
        f"s3://{hot['bucket']}/scratch", PASSWORD.encode(), "GLACIER"
    )

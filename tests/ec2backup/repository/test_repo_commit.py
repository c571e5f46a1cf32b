"""Committing a session's restore point (issue 14): idempotent (a retry after a lost reply
returns the restore point already written, never a second one), and verifying (a volume that
did not reach its end, a missing map page or an unindexed blob: nothing is committed). A
checkpoint is resumed only for the snapshot and size it was written for."""

from __future__ import annotations

import os
from typing import Any

import pytest
from repo_helpers import PASSWORD

from ec2backup import imagebackup
from ec2backup.imagebackup import IncompleteBackup, checkpoint_key
from ec2backup.models.session import ImagePlan, TransferRangeInput, VolumePlan
from ec2backup.models.snapshots import SnapshotMember, SnapshotSet
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE
from ec2backup.repository.repo import Repository
from ec2backup.repository.restorepoint import VolumeMetadata
from ec2backup.repository.writer import BackupWriter, checkpoint_name
from worker_agent.transfer import open_writer

SESSION = "backup-0123456789abcdef"
BLOCKS = 8  # a 4 MiB volume (size_gib is not used by the commit itself)


def _plan(repo_url: str, blocks_total: int = BLOCKS) -> tuple[SnapshotSet, ImagePlan]:
    member = SnapshotMember(
        snapshot_id="snap-0aaa", volume_id="vol-0aaa", device="/dev/sdf", size_gib=1
    )
    snapshot_set = SnapshotSet(
        set_id="set-0123456789abcdef",
        region="us-east-1",
        account="123456789012",
        instance_id="i-0123456789abcdef0",
        availability_zone="us-east-1a",
        members=[member],
    )
    volume = VolumePlan(
        source_volume_id="vol-0aaa",
        snapshot_id="snap-0aaa",
        device="/dev/sdf",
        worker_device="/dev/sdf",
        size_gib=1,
        volume_type="gp3",
        blocks_total=blocks_total,
    )
    plan = ImagePlan(
        repository=repo_url,
        placement="backup",
        placement_reason="test",
        worker_role_arn=None,
        snapshot_role_arn=None,
        region="us-east-1",
        availability_zone="us-east-1a",
        instance_type="c5.large",
        range_blocks=BLOCKS,
        volumes=[volume],
        secret_name="unused",
    )
    return snapshot_set, plan


def _transfer(repo: Repository, blocks: int) -> None:
    """What a worker's range leaves behind: `blocks` blocks written and checkpointed."""
    writer = BackupWriter(
        repo,
        name="vol-0aaa",
        size=BLOCKS * EBS_BLOCK_SIZE,
        checkpoint_key=checkpoint_key(SESSION, "vol-0aaa"),
        metadata=VolumeMetadata(source_volume_id="vol-0aaa", snapshot_id="snap-0aaa"),
    )
    for i in range(blocks):
        writer.add(i, os.urandom(EBS_BLOCK_SIZE))
    writer.checkpoint(blocks)
    writer.close()


def _commit(repo_url: str, blocks_total: int = BLOCKS) -> str:
    snapshot_set, plan = _plan(repo_url, blocks_total)
    return imagebackup.commit(SESSION, snapshot_set, plan, "adhoc", PASSWORD).restore_point_id


def test_commit_is_idempotent(init_repo: str) -> None:
    repo = Repository.open(init_repo, PASSWORD.encode())
    _transfer(repo, BLOCKS)
    first = _commit(init_repo)
    # The reply was lost and the activity retried: same restore point, no second one.
    assert _commit(init_repo) == first
    assert [rid for rid, _ in repo.list_restore_points()] == [first]


def test_commit_refuses_an_unfinished_volume(init_repo: str) -> None:
    repo = Repository.open(init_repo, PASSWORD.encode())
    _transfer(repo, BLOCKS // 2)
    with pytest.raises(IncompleteBackup, match=r"4 of 8 blocks durable"):
        _commit(init_repo)
    assert repo.list_restore_points() == []


@pytest.mark.parametrize("lose", ["page", "index"])
def test_commit_refuses_missing_pages_or_blobs(init_repo: str, lose: str) -> None:
    repo = Repository.open(init_repo, PASSWORD.encode())
    _transfer(repo, BLOCKS)
    prefix = "maps/" if lose == "page" else "index/"
    for name, _ in list(repo.backend.list(prefix)):
        repo.backend.delete(name)
    with pytest.raises(IncompleteBackup, match="not committing"):
        _commit(init_repo)
    assert Repository.open(init_repo, PASSWORD.encode()).list_restore_points() == []


def _range(repo_url: str, snapshot_id: str, size_gib: int = 1) -> TransferRangeInput:
    _set, plan = _plan(repo_url)
    volume = plan.volumes[0].model_copy(update={"snapshot_id": snapshot_id, "size_gib": size_gib})
    return TransferRangeInput(
        session_id=SESSION,
        repository=repo_url,
        secret_name="unused",
        secret_region="us-east-1",
        snapshot_role_arn=None,
        region="us-east-1",
        volume=volume,
        worker_device="/dev/sdf",
        start_block=0,
        end_block=BLOCKS,
        cursor=0,
        last_range=True,
    )


@pytest.mark.parametrize(
    ("snapshot_id", "size_gib", "resumed"),
    [("snap-0aaa", 1, True), ("snap-0bbb", 1, False), ("snap-0aaa", 2, False)],
)
def test_checkpoint_resumed_only_for_its_snapshot_and_size(
    init_repo: str, snapshot_id: str, size_gib: int, resumed: bool
) -> None:
    repo = Repository.open(init_repo, PASSWORD.encode())
    writer = BackupWriter(
        repo,
        name="vol-0aaa",
        size=1024**3,
        checkpoint_key=checkpoint_key(SESSION, "vol-0aaa"),
        metadata=VolumeMetadata(source_volume_id="vol-0aaa", snapshot_id="snap-0aaa"),
    )
    for i in range(3):
        writer.add(i, os.urandom(EBS_BLOCK_SIZE))
    writer.checkpoint(3)
    writer.close()
    opened: Any = open_writer(repo, _range(init_repo, snapshot_id, size_gib))
    try:
        assert opened.position == (3 if resumed else 0)
        assert opened.metadata.snapshot_id == snapshot_id
        assert opened.size == size_gib * 1024**3
    finally:
        opened.close()
    key = checkpoint_name(checkpoint_key(SESSION, "vol-0aaa"))
    assert repo.backend.exists(key) == resumed  # a foreign checkpoint is dropped


def test_a_closed_sessions_checkpoints_are_dropped(init_repo: str) -> None:
    repo = Repository.open(init_repo, PASSWORD.encode())
    _transfer(repo, BLOCKS // 2)
    name = checkpoint_name(checkpoint_key(SESSION, "vol-0aaa"))
    assert repo.backend.exists(name)
    assert imagebackup.drop_checkpoints(init_repo, SESSION, ["vol-0aaa"], PASSWORD) == 1
    assert not repo.backend.exists(name)
    assert imagebackup.drop_checkpoints(init_repo, SESSION, ["vol-0aaa"], PASSWORD) == 0

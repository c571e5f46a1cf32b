"""Prune and unfinished backups (issue 14, the reproduced case): a backup checkpointed page 0;
a prune runs while checkpoint reads fail (an S3 403/503 on `checkpoints/`). The old prune
skipped the unreadable checkpoint and deleted page 0 and its packs under the backup. Now it
refuses, the backup resumes and commits, and everything it wrote is there and restores."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from repo_helpers import PASSWORD

from ec2backup.errors import UserError
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE, PAGE_BLOCKS
from ec2backup.repository.check import check
from ec2backup.repository.prune import prune
from ec2backup.repository.reader import restore_volume
from ec2backup.repository.repo import Repository
from ec2backup.repository.writer import BackupWriter, commit_restore_point

KEY = "backup-prune-test/vol-0aaa"
SIZE = (PAGE_BLOCKS + 8) * EBS_BLOCK_SIZE  # two map pages
PAGE0 = {i: os.urandom(EBS_BLOCK_SIZE) for i in (0, 1, 7)}
PAGE1 = {PAGE_BLOCKS + i: os.urandom(EBS_BLOCK_SIZE) for i in (0, 3)}


def test_prune_refuses_while_a_checkpoint_is_unreadable_and_the_backup_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = str(tmp_path / "repo")
    repo = Repository.create(url, PASSWORD.encode(), pack_size=1024 * 1024)
    writer = BackupWriter(repo, name="vol-0aaa", size=SIZE, checkpoint_key=KEY)
    for index, data in PAGE0.items():
        writer.add(index, data)
    writer.checkpoint()  # page 0 and its packs are durable, referenced by the checkpoint only
    writer.close()

    pruner = Repository.open(url, PASSWORD.encode())
    real = pruner.load_named

    def unreadable(name: str) -> Any:
        if name.startswith("checkpoints/"):
            raise UserError(f"cannot access {name}: AccessDenied (403)")
        return real(name)

    monkeypatch.setattr(pruner, "load_named", unreadable)
    before = sorted(pruner.backend.list(""))
    with pruner.lock(exclusive=True, purpose="prune"), pytest.raises(UserError) as refused:
        prune(pruner)
    assert "checkpoints/" in str(refused.value) and "refusing to prune" in str(refused.value)
    assert sorted(pruner.backend.list("")) == [
        (n, s) for n, s in before if not n.startswith("locks/")
    ]

    resumed = BackupWriter.resume(Repository.open(url, PASSWORD.encode()), KEY)
    assert resumed.position == max(PAGE0) + 1
    for index, data in PAGE1.items():
        resumed.add(index, data)
    record = resumed.finish()
    final = Repository.open(url, PASSWORD.encode())
    rp_id = commit_restore_point(final, [record], checkpoint_keys=[KEY])
    assert check(final, read_data=True).ok

    got: dict[int, bytes] = {}

    def write(offset: int, data: bytes | memoryview) -> None:
        got[offset // EBS_BLOCK_SIZE] = bytes(data)

    restore_volume(final, final.load_restore_point(rp_id)[1].volumes[0], write)
    assert got == {**PAGE0, **PAGE1}

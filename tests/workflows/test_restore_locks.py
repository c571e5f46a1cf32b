"""Restores from a backup hold a shared repository lock for as long as they read (issue 14): a
prune (exclusive lock) cannot delete packs under a running restore, and a restore waits for a
running prune instead of reading packs it is deleting."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from session_helpers import REPO_ROOT, Workbench, wait_for
from test_restore import assert_same_content

from ec2backup.repository.locks import list_locks
from ec2backup.repository.repo import Repository


def test_restore_waits_for_a_prune_and_releases_its_lock(
    wb: Workbench, monkeypatch: pytest.MonkeyPatch
) -> None:
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02", "--seed", "51")
    repo_url = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo_url)
    assert session.result is not None
    rp = session.result["restore_point_id"]
    for name, value in wb.env.items():  # this process reaches the lab's S3 as the CLI does
        if name.startswith("AWS_"):
            monkeypatch.setenv(name, value)
    repo = Repository.open(repo_url, wb.env["EC2BACKUP_REPO_PASSWORD"].encode())
    prune = repo.lock(exclusive=True, purpose="test: a prune in progress")
    args = ["restore", "volume", rp, "--repo", repo_url, "--source", "backup", "--device"]
    restore = subprocess.Popen(
        [sys.executable, "-m", "ec2backup.cli", *args, "/dev/sdf", "--wait"],
        env=wb.env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # The restore gets as far as reading, then waits: its volume is not written meanwhile.
        time.sleep(15)
        assert restore.poll() is None, "the restore finished under an exclusive lock"
        held = [lock.info for lock in list_locks(repo) if lock.info is not None]
        assert any(i.exclusive for i in held), held
    finally:
        prune.release()
    stdout, stderr = restore.communicate(timeout=240)
    assert restore.returncode == 0, stderr
    result = json.loads("\n".join(stdout.splitlines()[1:]))
    assert result["status"] == "completed" and result["bytes_written"] > 0
    volumes = {v["device"]: v["volume_id"] for v in result["volumes"]}
    assert_same_content(wb, volumes, session)
    # Released when done: an exclusive locker gets in at once.
    wait_for(lambda: not list_locks(repo) or None, 30, "the restore's lock to be released")
    repo.lock(exclusive=True, purpose="test: prune after the restore").release()

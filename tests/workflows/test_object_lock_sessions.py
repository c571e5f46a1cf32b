"""Object Lock repositories through a policy's sessions (issue 17): a policy with
`image_backup.object_lock` backs up into an Object Lock repository, and an ad-hoc incremental
follows: each commit locks everything its restore point needs until the point's horizon (a pack
both share to the later one); `repo check` reports full coverage. The same
policy pointed at a repository without Object Lock fails at once, naming the repository, and
launches no worker."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

import pytest
from session_helpers import REGION, Workbench

from ec2backup.repository import objectlock
from ec2backup.repository.backend import S3Backend
from ec2backup.repository.repo import Repository

POLICY = """\
name: {name}
selection:
  instance_ids: [{instance}]
  regions: [{region}]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{count: 2}}
image_backup:
  repository: {repo}
  retention: {{daily: 1, weekly: 0, monthly: 0}}
  object_lock: {mode}
"""


def _apply(wb: Workbench, path: Path, **fields: str) -> None:
    path.write_text(POLICY.format(region=REGION, **fields))
    wb.cli("policy", "apply", str(path))


def test_sessions_into_an_object_lock_repository_lock_what_each_point_needs(
    wb: Workbench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = f"olock-{uuid.uuid4().hex[:6]}"
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.05", "--seed", "61")
    instance_id, volume_id = inst["instance_id"], inst["volumes"][0]["volume_id"]
    url = wb.new_repo("--object-lock", "governance", "--lock-days", "5", object_lock=True)
    policy = tmp_path / "policy.yaml"
    _apply(wb, policy, name=name, instance=instance_id, repo=url, mode="governance")
    for key, value in wb.env.items():  # this process reaches the lab's S3 as the CLI does
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)

    def locked_as_needed(rp_id: str) -> tuple[set[str], dt.datetime]:
        """What the restore point needs, each locked (governance) until its horizon at least."""
        repo = Repository.open(url, wb.env["EC2BACKUP_REPO_PASSWORD"].encode())
        assert isinstance(repo.backend, S3Backend)
        _rid, rp = repo.load_restore_point(rp_id)
        assert rp.lock_until is not None
        names = set(objectlock.needed_objects(repo, rp_id, rp))
        for obj in names:
            mode, until = repo.backend.retention(obj)
            assert mode == "GOVERNANCE" and until is not None and until >= rp.lock_until, obj
        return names, rp.lock_until

    first = wb.policy_run(name)["instances"][0]
    needed1, horizon1 = locked_as_needed(first["restore_point_id"])
    wb.cli("lab", "churn", volume_id, "--fraction", "0.05", "--seed", "62")
    # An ad-hoc incremental: kept the repository's lock days (5), longer than the policy's
    # retention (one a day), so its horizon is the later one.
    second = wb.backup(instance_id, "--repo", url).result
    assert second is not None
    needed2, horizon2 = locked_as_needed(second["restore_point_id"])
    assert horizon2 > horizon1
    shared = {n for n in needed1 & needed2 if n.startswith("data/")}
    assert shared, "the incremental reuses packs of the full"
    repo = Repository.open(url, wb.env["EC2BACKUP_REPO_PASSWORD"].encode())
    assert isinstance(repo.backend, S3Backend)
    for obj in shared:  # extended to the later horizon
        until = repo.backend.retention(obj)[1]
        assert until is not None and until >= horizon2, obj
    check = wb.cli("repo", "check", "--repo", url)
    assert "lock coverage: 100%" in check.stderr, check.stderr

    # Compliance asked, governance found: refused before any worker exists.
    _apply(wb, policy, name=name, instance=instance_id, repo=url, mode="compliance")
    failed = wb.policy_run(name, status="FAILED")
    assert "requires Object Lock in compliance mode" in failed["failure"], failed
    assert not wb.session_instances(f"{failed['run_id']}-0000")  # no worker launched
    plain = wb.new_repo()
    _apply(wb, policy, name=name, instance=instance_id, repo=plain, mode="governance")
    failed = wb.policy_run(name, status="FAILED")
    assert (
        f"repository {plain}: the policy requires an Object Lock repository" in (failed["failure"])
    ), failed
    wb.cli("policy", "delete", name)

"""`Repository.refresh_index`, what lets the worker agent keep a repository open from one range
to the next (worker_agent/repositories.py): index files written by others since the load are
added, and after a prune rewrote the index (dropping packs) everything is loaded again, so a
blob the prune removed is never taken for stored by a writer that dedups against the index."""

from __future__ import annotations

import random
from pathlib import Path

from repo_helpers import PASSWORD, open_repo, run_inproc
from repo_imagegen import BS

from ec2backup import crypto
from ec2backup.repository.prune import prune


def _image(path: Path, seed: int, blocks: int = 4) -> list[bytes]:
    rng = random.Random(seed)
    data = [rng.randbytes(BS) for _ in range(blocks)]
    path.write_bytes(b"".join(data))
    return data


def test_refresh_adds_new_index_files_and_reloads_after_a_prune(
    init_repo: str, tmp_path: Path
) -> None:
    kept = open_repo(init_repo)  # the agent's object, kept between ranges
    kept.load_index()
    first = _image(tmp_path / "a.img", 1)
    rp_a = run_inproc("image", "backup", tmp_path / "a.img", "--repo", init_repo).last_line
    ids_a = [crypto.keyed_hash(kept.id_key, b) for b in first]
    assert not any(i in kept.load_index().blobs for i in ids_a)  # stale, as loaded

    with kept.lock(exclusive=False, purpose="range 1"):
        index = kept.refresh_index()
    assert all(i in index.blobs for i in ids_a)
    assert index is kept.load_index()  # added to, not replaced

    # Another process forgets the restore point and prunes: a's packs leave the index.
    assert run_inproc("repo", "forget", rp_a[:8], "--repo", init_repo).code == 0
    other = open_repo(init_repo)
    with other.lock(exclusive=True, purpose="prune"):
        report = prune(other)
    assert report.packs_marked > 0
    with kept.lock(exclusive=False, purpose="range 2"):
        index = kept.refresh_index()
    assert not any(i in index.blobs for i in ids_a)  # reloaded: nothing pruned looks stored
    assert set(index.files) == set(other.list_ids("index"))


def test_kept_repositories_are_reused_by_location_and_password(init_repo: str) -> None:
    from worker_agent import repositories

    repositories.forget()
    try:
        one = repositories.open_repository(init_repo, PASSWORD.encode())
        assert repositories.open_repository(init_repo, PASSWORD.encode()) is one
        assert repositories.open_repository(init_repo + "/", PASSWORD.encode()) is not one
    finally:
        repositories.forget()

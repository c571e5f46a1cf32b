"""Format version 2: block maps tell a written all-zero block from a hole; version 1 still reads.

On AWS the difference decides whether a restore is exact: a block never put into an encrypted
EBS-direct snapshot reads as random bytes, so a restore must know which blocks the source wrote.
"""

from __future__ import annotations

import random
from pathlib import Path

from repo_helpers import PASSWORD, rewrite_config

from ec2backup.repository.blockmap import (
    EBS_BLOCK_SIZE,
    ID_SIZE,
    WRITTEN_ZERO_ID,
    ZERO_ID,
)
from ec2backup.repository.reader import restore_volume
from ec2backup.repository.repo import CONFIG_NAME, FORMAT_VERSION, RepoConfig, Repository
from ec2backup.repository.restorepoint import VolumeRecord
from ec2backup.repository.writer import BackupWriter, commit_restore_point

BS = EBS_BLOCK_SIZE
SIZE = 12 * BS
DATA = {0: random.Random(1).randbytes(BS), 7: random.Random(2).randbytes(BS)}
WRITTEN_ZEROS = (3, 4, 5)  # a zeroed region in the middle of the data
HOLES = tuple(i for i in range(12) if i not in DATA and i not in WRITTEN_ZEROS)


def _entries(repo: Repository, record: VolumeRecord) -> list[bytes]:
    assert record.pages[0] is not None
    page = repo.load_page(record.pages[0])
    return [bytes(page[i * ID_SIZE : (i + 1) * ID_SIZE]) for i in range(SIZE // BS)]


def _backup(
    repo: Repository, parent: VolumeRecord | None = None, **changes: bytes | None
) -> VolumeRecord:
    writer = BackupWriter(repo, name="vol", size=SIZE, parent=parent)
    if parent is None:
        blocks: dict[int, bytes | None] = {**DATA, **{i: bytes(BS) for i in WRITTEN_ZEROS}}
    else:
        blocks = {int(k[1:]): v for k, v in changes.items()}
    for index in sorted(blocks):
        writer.add(index, blocks[index])
    record = writer.finish()
    commit_restore_point(repo, [record])
    return record


def _writes(repo: Repository, record: VolumeRecord, write_zeros: bool) -> dict[int, bytes]:
    seen: dict[int, bytes] = {}

    def write(offset: int, data: bytes | memoryview) -> None:
        seen[offset // BS] = bytes(data)

    restore_volume(repo, record, write, write_zeros=write_zeros)
    return seen


def _downgrade_to_v1(url: str) -> None:
    """Make the repository a version 1 one (as an older program created it)."""
    repo = Repository.open(url, PASSWORD.encode())
    rewrite_config(repo, version=1)


def test_new_repositories_mark_written_zero_blocks(tmp_path: Path) -> None:
    repo = Repository.create(str(tmp_path / "r"), PASSWORD.encode())
    assert repo.config.version == FORMAT_VERSION == 3
    record = _backup(repo)
    entries = _entries(repo, record)
    assert all(entries[i] == WRITTEN_ZERO_ID for i in WRITTEN_ZEROS)
    assert all(entries[i] == ZERO_ID for i in HOLES)
    assert record.stats.blocks_allocated == len(DATA) + len(WRITTEN_ZEROS)
    # A restore onto a target that must list what the source listed writes the zero blocks,
    # and never a hole; a sparse-file restore may leave both out.
    assert _writes(repo, record, write_zeros=True) == {
        **DATA,
        **{i: bytes(BS) for i in WRITTEN_ZEROS},
    }
    assert _writes(repo, record, write_zeros=False) == DATA


def test_an_incremental_records_a_block_gone_from_the_snapshot_as_a_hole(tmp_path: Path) -> None:
    """ListChangedBlocks names a block only the parent snapshot has: it is not written now."""
    repo = Repository.create(str(tmp_path / "r"), PASSWORD.encode())
    full = _backup(repo)
    incremental = _backup(repo, parent=full, b7=None, b4=None, b9=bytes(BS))
    entries = _entries(repo, incremental)
    assert entries[7] == ZERO_ID and entries[4] == ZERO_ID  # holes now
    assert entries[9] == WRITTEN_ZERO_ID and entries[3] == WRITTEN_ZERO_ID
    assert sorted(_writes(repo, incremental, write_zeros=True)) == [0, 3, 5, 9]


def test_version_1_repositories_still_read_and_stay_version_1(tmp_path: Path) -> None:
    url = str(tmp_path / "r")
    Repository.create(url, PASSWORD.encode())
    _downgrade_to_v1(url)
    repo = Repository.open(url, PASSWORD.encode())
    assert not repo.marks_written_zeros
    record = _backup(repo)
    entries = _entries(repo, record)
    # Written in version 1 form (an older program must still read it): zeros are holes ...
    assert all(entries[i] == ZERO_ID for i in (*WRITTEN_ZEROS, *HOLES))
    # ... and they restore as zeros on a target that reads as zeros where nothing is written.
    assert _writes(repo, record, write_zeros=True) == DATA
    config = RepoConfig.model_validate_json(repo.backend.get(CONFIG_NAME))
    assert config.version == 1


def test_repo_init_takes_a_compression_level(tmp_path: Path) -> None:
    from repo_helpers import run_inproc
    from repo_imagegen import sha256_file

    url = str(tmp_path / "repo")
    res = run_inproc("repo", "init", "--repo", url, "--compression-level", "1")
    assert res.code == 0, res.err
    assert Repository.open(url, PASSWORD.encode()).config.compression_level == 1
    image = tmp_path / "disk.img"
    image.write_bytes(b"".join(f"line {i} of a log\n".encode() * 16384 for i in range(4)))
    rp = run_inproc("image", "backup", image, "--repo", url).last_line
    out = tmp_path / "out.img"
    assert run_inproc("image", "restore", rp, "--repo", url, "-o", out).code == 0
    assert sha256_file(out) == sha256_file(image)
    bad = run_inproc("repo", "init", "--repo", str(tmp_path / "r2"), "--compression-level", "0")
    assert bad.code != 0 and "--compression-level" in bad.err
    assert not (tmp_path / "r2").exists()  # nothing half-written

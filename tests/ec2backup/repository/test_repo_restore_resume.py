"""A restore resumed from a checkpoint (`restore_volume(from_block=..., done_below=...)`): the
checkpoints only ever grow and end at the volume's last block, a resumed restore writes nothing
below its starting block, and a first part cut off at any checkpoint plus the resumed rest
equals a whole restore, zero runs and holes included, across map pages."""

from __future__ import annotations

import random
import threading
from pathlib import Path

from repo_helpers import PASSWORD, TEST_PACK_MIB
from repo_imagegen import BS, random_block, text_block

from ec2backup.repository.blockmap import PAGE_BLOCKS
from ec2backup.repository.reader import restore_volume
from ec2backup.repository.repo import Repository
from ec2backup.repository.restorepoint import VolumeRecord
from ec2backup.repository.writer import BackupWriter, commit_restore_point

N_BLOCKS = PAGE_BLOCKS + 300  # two map pages, the second short


def _volume(tmp_path: Path) -> tuple[Repository, VolumeRecord]:
    repo = Repository.create(
        str(tmp_path / "repo"), PASSWORD.encode(), pack_size=TEST_PACK_MIB << 20
    )
    rng = random.Random(7)
    w = BackupWriter(repo, name="vol", size=N_BLOCKS * BS)
    for i in range(N_BLOCKS):
        r = rng.random() if abs(i - PAGE_BLOCKS) > 8 else 0.99  # data around the page edge
        if r < 0.94:
            continue  # a hole
        if r < 0.96:
            w.add(i, bytes(BS))  # a written zero block
        else:
            w.add(i, text_block(rng) if r < 0.98 else random_block(rng))
    rp_id = commit_restore_point(repo, [w.finish()])
    return repo, repo.load_restore_point(rp_id)[1].volumes[0]


class Target:
    """A device: the blocks written, by index (a later write of a block replaces it)."""

    def __init__(self) -> None:
        self.blocks: dict[int, bytes] = {}
        self.lock = threading.Lock()

    def write(self, offset: int, data: bytes | memoryview) -> None:
        with self.lock:
            for i in range(0, len(data), BS):
                self.blocks[(offset + i) // BS] = bytes(data[i : i + BS])


def test_checkpoints_grow_and_a_resumed_restore_completes_the_volume(tmp_path: Path) -> None:
    repo, volume = _volume(tmp_path)
    whole = Target()
    marks: list[int] = []
    restore_volume(repo, volume, whole.write, write_zeros=True, done_below=marks.append)
    assert marks == sorted(marks) and marks[-1] == N_BLOCKS and len(marks) > 3
    assert len(whole.blocks) > N_BLOCKS // 25

    for cut in (marks[0], marks[len(marks) // 2], PAGE_BLOCKS, PAGE_BLOCKS + 1, marks[-2]):
        # What a checkpoint at `cut` guarantees: every block below it is on the device.
        part = Target()
        part.blocks = {i: d for i, d in whole.blocks.items() if i < cut}
        rest = Target()
        restore_volume(repo, volume, rest.write, write_zeros=True, from_block=cut)
        assert min(rest.blocks, default=cut) >= cut, f"resumed at {cut}, wrote below it"
        assert {**part.blocks, **rest.blocks} == whole.blocks, f"resumed at {cut}"

"""Restore points: what was backed up, when, and the block-map roots of its volumes."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any

from pydantic import BaseModel, Field

from ec2backup.repository.blockmap import EBS_BLOCK_SIZE, PAGE_BLOCKS

RESTORE_POINT_VERSION = 1


class VolumeStats(BaseModel):
    blocks_total: int = 0  # blocks covering the volume size
    blocks_allocated: int = 0  # non-zero blocks in the map (what a restore writes)
    blocks_read: int = 0  # blocks read from the source in this backup
    blocks_new: int = 0  # blobs stored by this backup (not deduplicated)
    bytes_read: int = 0
    bytes_new_raw: int = 0  # plaintext bytes of new blobs
    bytes_new_stored: int = 0  # ciphertext bytes of new blobs
    pages_written: int = 0
    seconds: float = 0.0


class VolumeRecord(BaseModel):
    """One volume of a restore point: its size and block-map root."""

    index: int = 0
    name: str  # volume id (vol-...) or image path
    device: str | None = None  # e.g. /dev/xvda, for instance restores
    size: int  # bytes; a restore truncates the image to this
    block_size: int = EBS_BLOCK_SIZE
    page_blocks: int = PAGE_BLOCKS
    pages: list[str | None]  # map page object ids; None = page of all-zero blocks
    stats: VolumeStats = Field(default_factory=VolumeStats)
    metadata: dict[str, Any] = Field(default_factory=dict)


class RestorePoint(BaseModel):
    version: int = RESTORE_POINT_VERSION
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    hostname: str = Field(default_factory=socket.gethostname)
    parent: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)  # instance metadata, image path, ...
    tags: dict[str, str] = Field(default_factory=dict)
    volumes: list[VolumeRecord]

    def volume(self, selector: str | None) -> VolumeRecord:
        """Pick a volume by index or name (volume id); the only one when selector is None."""
        from ec2backup.errors import NotFoundError, UserError

        if selector is None:
            if len(self.volumes) != 1:
                names = ", ".join(f"{v.index}:{v.name}" for v in self.volumes)
                raise UserError(
                    f"restore point has {len(self.volumes)} volumes ({names}): "
                    "choose one with --volume"
                )
            return self.volumes[0]
        for v in self.volumes:
            if v.name == selector or (selector.isdigit() and v.index == int(selector)):
                return v
        raise NotFoundError(f"volume {selector!r} not in restore point")

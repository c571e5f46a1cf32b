"""Restore points: what was backed up, when, and the block-map roots of its volumes."""

from __future__ import annotations

import datetime as dt
import socket
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from ec2backup.repository.blockmap import EBS_BLOCK_SIZE, PAGE_BLOCKS

RESTORE_POINT_VERSION = 1


class VolumeStats(BaseModel):
    blocks_total: int = 0  # blocks covering the volume size
    blocks_allocated: int = 0  # non-zero blocks in the map (what a restore writes)
    # blocks the backup was given: listed as changed or allocated (holes included); 0 in
    # restore points written before it was recorded
    blocks_listed: int = 0
    blocks_read: int = 0  # blocks read from the source in this backup
    blocks_new: int = 0  # blobs stored by this backup (not deduplicated)
    bytes_read: int = 0
    bytes_new_raw: int = 0  # plaintext bytes of new blobs
    bytes_new_stored: int = 0  # ciphertext bytes of new blobs
    # new blobs stored uncompressed (compression did not shrink them: random, encrypted or
    # already compressed data); the ransomware signal's input (ec2backup.anomaly)
    blocks_incompressible: int = 0
    pages_written: int = 0
    seconds: float = 0.0


# VolumeStats counters that add up over the parts of one volume written by several writers
# (`blocks_total`, `blocks_allocated` and `seconds` do not).
SUMMED_STATS = (
    "blocks_listed",
    "blocks_read",
    "blocks_new",
    "blocks_incompressible",
    "bytes_read",
    "bytes_new_raw",
    "bytes_new_stored",
    "pages_written",
)


class _Open(BaseModel):
    """A documented schema whose unknown keys are kept (a newer version may add some) and
    whose unset keys are left out of the JSON (the object stays what older versions wrote)."""

    model_config = ConfigDict(extra="allow")

    @model_serializer(mode="wrap")
    def _drop_unset(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class VolumeMetadata(_Open):
    """What an instance backup records of each volume (repository-format.md §5.5); empty for
    `image backup`."""

    source_volume_id: str | None = None  # the EBS volume backed up
    snapshot_id: str | None = None  # the snapshot read: the next incremental's CBT base
    parent_snapshot_id: str | None = None  # the CBT base this backup listed changes against
    cbt_reason: str | None = None  # why those blocks were read (for operators)
    size_gib: int | None = None  # the volume's shape, for restores
    volume_type: str | None = None
    iops: int | None = None
    throughput: int | None = None
    encrypted: bool | None = None


# What a restore point was made from: an EC2 instance (a backup session) or an image file.
SourceKind = Literal["ec2-instance", "image"]


class RestorePointSource(_Open):
    """Where a restore point came from (repository-format.md §5.5)."""

    kind: SourceKind | None = None
    path: str | None = None  # kind image: the file or device backed up
    # kind ec2-instance:
    instance_id: str | None = None
    region: str | None = None
    account: str | None = None
    availability_zone: str | None = None
    snapshot_set_id: str | None = None  # the snapshot set the blocks were read from
    session_id: str | None = None  # the BackupSession workflow
    placement: str | None = None  # backup | production: where the worker ran
    instance_type: str | None = None
    root_device: str | None = None
    # What an image of the instance must say for it to boot again (RegisterImage): x86_64 |
    # arm64, ENA support, legacy-bios | uefi.
    architecture: str | None = None
    ena_support: bool | None = None
    boot_mode: str | None = None
    subnet_id: str | None = None
    instance_tags: dict[str, str] | None = None
    # archive copies (repository-format.md §9.1): which restore point of which repository
    archived_from: str | None = None
    hot_repository_id: str | None = None


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
    metadata: VolumeMetadata = Field(default_factory=VolumeMetadata)


class VolumeSignal(BaseModel):
    """What one volume's backup looked like to the ransomware signal (ec2backup.anomaly)."""

    name: str  # source volume id
    device: str | None = None
    changed_rate: float  # blocks read / blocks of the volume
    new_blocks: int  # blobs this backup stored (not deduplicated)
    incompressible_share: float  # of those, the share stored uncompressed


class Resolution(BaseModel):
    """An operator's word that an anomaly was not an attack (`resolutions/<restore point id>`,
    repository-format.md §5.7): kept beside the restore point, which never changes."""

    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    reason: str
    hostname: str = Field(default_factory=socket.gethostname)


class AnomalySignal(BaseModel):
    """The ransomware signal of an instance backup (repository-format.md §5.5): each volume's
    figures, the verdict against the instance's own history, and why."""

    verdict: Literal["clean", "anomaly", "no-baseline"]
    reasons: list[str] = Field(default_factory=list)
    volumes: list[VolumeSignal] = Field(default_factory=list)
    baseline_points: int = 0  # earlier restore points the verdict compared against
    # Filled in when the restore point is read (never stored in it): the operator resolved
    # this anomaly (`restore-points resolve`).
    resolved: Resolution | None = Field(default=None, exclude=True)

    @property
    def flagged(self) -> bool:
        """An anomaly nobody resolved: what marks the end of an instance's clean points."""
        return self.verdict == "anomaly" and self.resolved is None


class RestorePoint(BaseModel):
    version: int = RESTORE_POINT_VERSION
    time: dt.datetime = Field(default_factory=lambda: dt.datetime.now(dt.UTC))
    hostname: str = Field(default_factory=socket.gethostname)
    parent: str | None = None
    source: RestorePointSource = Field(default_factory=RestorePointSource)
    tags: dict[str, str] = Field(default_factory=dict)
    volumes: list[VolumeRecord]
    anomaly: AnomalySignal | None = None  # instance backups since the ransomware signal
    # Object Lock repositories: everything this restore point needs is locked at least until
    # then (its time + how long it is kept + the margin; repository-format.md §10)
    lock_until: dt.datetime | None = None

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

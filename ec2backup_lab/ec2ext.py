"""moto's EC2 backend, extended so that EBS volumes and snapshots carry real bytes.

Installed by replacing the backend class in moto's `BackendDict` (it survives resets) and a few
response-handler methods (moto builds a handler object per request). Each override closes one
of the gaps measured in `research/moto-audit.md`; the comments name the AWS behaviour it adds.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import moto.ec2.models as ec2_models
import moto.ec2.urls
from moto.core.responses import ActionResult, EmptyResult
from moto.ec2.exceptions import EC2ClientError, InvalidVolumeIdError
from moto.ec2.models import EC2Backend
from moto.ec2.models.amis import Ami
from moto.ec2.models.elastic_block_store import Snapshot as MotoSnapshot
from moto.ec2.models.elastic_block_store import Volume, VolumeAttachment
from moto.ec2.models.iam_instance_profile import IamInstanceProfileAssociation
from moto.ec2.responses.amis import AmisResponse
from moto.ec2.responses.elastic_block_store import ElasticBlockStore
from moto.ec2.utils import random_snapshot_id

from ec2backup_lab import firstread
from ec2backup_lab.blockstore import NOISE_PREFIX, BlockStore, VolumeData
from ec2backup_lab.runtime import get_runtime
from ec2backup_lab.timing import PENDING_SHARE_OF_BOOT, untimed

# What moto's handler passes when the caller gave no ClientToken.
MOTO_DEFAULT_CLIENT_TOKEN = "ABCDE"
_DEVICE_RE = re.compile(r"^/dev/(sd[a-z]\d*|xvd[a-z]{1,2}\d*|nvme\d+n\d+)$|^xvd[a-z]{1,2}$")


class LabClientError(EC2ClientError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(code, message)


# The lab's own images, by architecture and boot mode (`lab seed --arch --boot-mode`). Any other
# image id the lab does not know boots as x86_64 legacy-bios (moto's default).
LAB_IMAGES = {
    "ami-0ec2backup0lab001": ("x86_64", "legacy-bios"),
    "ami-0ec2backup0lab002": ("x86_64", "uefi"),
    "ami-0ec2backup0arm001": ("arm64", "uefi"),
}
# Owner of Amazon's public images (Amazon Linux), as DescribeImages reports it.
AMAZON_OWNER_ID = "137112412989"
# The instance types `lab seed` gives each architecture (moto knows their processors).
LAB_INSTANCE_TYPES = {"x86_64": "t3.micro", "arm64": "t4g.micro"}


def lab_image(architecture: str, boot_mode: str | None) -> str:
    """The lab image of this shape (arm64 boots only uefi, as Graviton does)."""
    mode = boot_mode or ("uefi" if architecture == "arm64" else "legacy-bios")
    for image_id, shape in LAB_IMAGES.items():
        if shape == (architecture, mode):
            return image_id
    raise ValueError(f"no lab image is {architecture} with boot mode {mode}")


def snapshot_not_found(snapshot_id: str) -> LabClientError:
    return LabClientError(
        "InvalidSnapshot.NotFound", f"The snapshot '{snapshot_id}' does not exist."
    )


def _store() -> BlockStore:
    return get_runtime().block_store


class _PhantomVolume:
    """What a copied or EBS-direct snapshot points at instead of a live volume."""

    def __init__(self, volume_id: str, size: int) -> None:
        self.id = volume_id
        self.size = size


# Keep moto's class name: its serializer aliases `SnapshotId` -> `id` by class name.
class Snapshot(MotoSnapshot):
    """A snapshot whose data is a point-in-time block map, `pending` for a while when new."""

    def __init__(
        self,
        *args: Any,
        block_map: dict[int, str] | None = None,
        lineage: str = "",
        pending_seconds: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._status_override: str | None = None
        super().__init__(*args, **kwargs)
        self.block_map: dict[int, str] = block_map or {}
        self.lineage = lineage or uuid.uuid4().hex
        seconds = (
            get_runtime().snapshot_pending_seconds if pending_seconds is None else pending_seconds
        )
        self._completed_at = time.monotonic() + seconds
        self._pending_seconds = seconds
        # EBS direct StartSnapshot bookkeeping (ebsdirect.py).
        self.lab_parent_id: str | None = None
        self.lab_started_at = 0.0  # monotonic time of StartSnapshot
        # Set on encrypted EBS-direct snapshots (and copies of them): blocks not in the map
        # read as this seed's random bytes, not zeros (blockstore.noise_digest).
        self.lab_noise: str | None = None
        self.lab_put_blocks: set[int] = set()
        self.lab_copy = False  # made by CopySnapshot

    @property  # type: ignore[override]
    def status(self) -> str:
        if self._status_override:
            return self._status_override
        return "completed" if time.monotonic() >= self._completed_at else "pending"

    @status.setter
    def status(self, value: str) -> None:
        # moto's __init__ assigns "completed"; the lab derives the state from time instead.
        if value != "completed":
            self._status_override = value

    @property
    def state(self) -> str:
        return self.status

    @property
    def progress(self) -> str:
        if self.status == "completed" or self._pending_seconds <= 0:
            return "100%"
        left = max(0.0, self._completed_at - time.monotonic())
        return f"{int(99 * (1 - left / self._pending_seconds))}%"


def _volume_path(backend: EC2Backend, volume_id: str) -> Path:
    root = get_runtime().root
    return root / "volumes" / backend.account_id / backend.region_name / f"{volume_id}.img"


def instance_dir(instance_id: str) -> Path:
    return get_runtime().root / "instances" / instance_id


def devices_dir(instance_id: str) -> Path:
    return instance_dir(instance_id) / "devices"


# What a Nitro instance shows for an attached EBS volume: an NVMe namespace `nvme<k>n1` whose
# serial is the volume id, and the udev link `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_
# <vol id without the dash>`. The `/dev/sdX` name of the attachment exists only where the AMI's
# udev rules create it, so the lab does not create it. NVMe numbers follow enumeration order,
# not the attachment order: the lab hands them out from the top down (the first volume attached
# gets the highest free number), so code that assumes the two orders agree reads the wrong disk.
NVME_BY_ID_PREFIX = "nvme-Amazon_Elastic_Block_Store_"
# nvme0 is the root volume's on EC2; attached volumes take nvme1..nvme26.
MAX_NVME_DEVICES = 27


def by_id_name(volume_id: str) -> str:
    return NVME_BY_ID_PREFIX + volume_id.replace("-", "")


def _nvme_slot(instance_id: str) -> Path:
    """The next NVMe device of the instance: the highest free number."""
    root = devices_dir(instance_id)
    taken = {p.name for p in root.glob("nvme*n1")}
    for number in range(MAX_NVME_DEVICES - 1, 0, -1):
        if f"nvme{number}n1" not in taken:
            return root / f"nvme{number}n1"
    raise LabClientError("AttachmentLimitExceeded", f"instance '{instance_id}' has no free slot")


def attach_device(instance_id: str, volume_id: str, target: Path) -> Path:
    """Make the attached volume appear on the instance: its NVMe device and by-id link."""
    nvme = _nvme_slot(instance_id)
    nvme.parent.mkdir(parents=True, exist_ok=True)
    nvme.symlink_to(target)
    link = nvme.parent / "by-id" / by_id_name(volume_id)
    link.parent.mkdir(exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..") / nvme.name)
    return nvme


def detach_device(instance_id: str, volume_id: str) -> None:
    link = devices_dir(instance_id) / "by-id" / by_id_name(volume_id)
    if link.is_symlink():
        (link.parent / os.readlink(link)).unlink(missing_ok=True)
        link.unlink(missing_ok=True)


# Serializes a delayed attachment's device appearing with the volume's detachment.
_attach_lock = threading.Lock()


def _finish_attach(
    volume: Volume, attachment: VolumeAttachment, instance_id: str, volume_id: str, target: Path
) -> None:
    """The end of `attaching`: the device appears, unless the volume was detached meanwhile
    (or the lab reset: then its instance directory is gone)."""
    with _attach_lock:
        if volume.attachment is attachment and devices_dir(instance_id).exists():
            attach_device(instance_id, volume_id, target)


def _volume_status(self: Volume) -> str:
    """moto's volume state, with `creating` for the time the timing model gives it."""
    if self.attachment:
        return "in-use"
    if getattr(self, "lab_available_at", 0.0) > time.monotonic():
        return "creating"
    return "available"


def _attachment_status(self: VolumeAttachment) -> str:
    status = str(self.__dict__.get("_lab_status", "attached"))
    if status == "attached" and getattr(self, "lab_attached_at", 0.0) > time.monotonic():
        return "attaching"
    return status


def _set_attachment_status(self: VolumeAttachment, value: str) -> None:
    self.__dict__["_lab_status"] = value


def all_ec2_backends() -> list[EC2Backend]:
    found = []
    for account_backends in list(ec2_models.ec2_backends.values()):
        for backend in list(account_backends.values()):
            found.append(backend)
    return found


class LabEC2Backend(EC2Backend):
    """EC2 with volume data, snapshot lineage, sharing across accounts and AWS-like validation."""

    def __init__(self, region_name: str, account_id: str) -> None:
        self.volume_data: dict[str, VolumeData] = {}
        self._ami_internal = False
        self.client_tokens: dict[str, str] = {}
        super().__init__(region_name, account_id)

    @property
    def _url_module(self) -> Any:  # moto guesses `<module>.urls`; ours lives elsewhere
        return moto.ec2.urls

    def _load_amis(self) -> None:
        """moto's images, plus Amazon Linux 2023's public images: moto's SSM answers
        `/aws/service/ami-amazon-linux-latest/al2023-*` with ids its EC2 does not know, and on
        AWS every id those parameters name is a public, Amazon-owned image (the workers' default
        AMI: RunInstances and DescribeImages must find it)."""
        super()._load_amis()
        from moto.utilities.utils import load_resource

        try:
            params = load_resource(f"ssm/resources/ami-amazon-linux-latest/{self.region_name}.json")
        except FileNotFoundError:
            return
        self._ami_internal = True
        try:
            for param in params:
                name = str(param["Name"]).rsplit("/", 1)[-1]
                if not name.startswith("al2023-ami-") or param["Value"] in self.amis:
                    continue
                ami = Ami(
                    self,
                    ami_id=param["Value"],
                    name=name,
                    description="Amazon Linux 2023 AMI",
                    owner_id=AMAZON_OWNER_ID,
                    owner_alias="amazon",
                    public=True,
                    virtualization_type="hvm",
                    architecture="arm64" if name.endswith("arm64") else "x86_64",
                    root_device_type="ebs",
                    root_device_name="/dev/xvda",
                    region_name=self.region_name,
                    boot_mode="uefi-preferred",
                )
                ami.ena_support = True  # type: ignore[attr-defined]
                # Amazon's snapshot behind its image is not one of the account's snapshots
                self.snapshots.pop(ami.ebs_snapshot.id, None)
                self.amis[ami.id] = ami
        finally:
            self._ami_internal = False

    # -- volumes -------------------------------------------------------------------------
    def create_volume(  # type: ignore[override]
        self,
        size: int,
        zone_name: str,
        snapshot_id: str | None = None,
        encrypted: bool = False,
        kms_key_id: str | None = None,
        **kwargs: Any,
    ) -> Volume:
        if self._ami_internal:  # moto's AMI bookkeeping volume: no data, no validation
            return super().create_volume(
                size, zone_name, snapshot_id, encrypted, kms_key_id, **kwargs
            )
        if not zone_name or self.get_zone_by_name(zone_name) is None:
            raise LabClientError(
                "InvalidParameterValue", f"Invalid availability zone: [{zone_name}]"
            )
        snapshot = self.get_snapshot(snapshot_id) if snapshot_id else None
        if snapshot is not None:
            if snapshot.status != "completed":
                raise LabClientError(
                    "IncorrectState", f"Snapshot '{snapshot.id}' is not 'completed'."
                )
            if size is not None and int(size) < snapshot.volume_size:
                raise LabClientError(
                    "InvalidParameterValue",
                    f"Volume of {size}GiB is smaller than snapshot '{snapshot.id}' "
                    f"({snapshot.volume_size}GiB).",
                )
            if snapshot.encrypted:
                # AWS: a volume from an encrypted snapshot is encrypted, with the snapshot's
                # key unless another one is given.
                encrypted = True
                kms_key_id = kms_key_id or snapshot.kms_key_id
        if kms_key_id:
            encrypted = True
            self._check_kms_key(kms_key_id)
        volume = super().create_volume(
            size, zone_name, snapshot_id, encrypted, kms_key_id, **kwargs
        )
        data = VolumeData(_store(), _volume_path(self, volume.id), int(volume.size))
        timing = get_runtime().timing
        if snapshot is not None:
            data.materialize(snapshot.block_map, noise=getattr(snapshot, "lab_noise", None))
            volume.lab_lineage = snapshot.lineage  # type: ignore[attr-defined]
            rate = timing.first_read_mib_s()
            if rate > 0:
                # AWS loads the snapshot's blocks from S3 on first read (firstread.py); the
                # blocks it never held (and an encrypted snapshot's random holes) are not
                # fetched.
                held = [i for i, d in snapshot.block_map.items() if not d.startswith(NOISE_PREFIX)]
                firstread.prepare_volume(data.path, held, data.blocks_total, rate)
        else:
            volume.lab_lineage = uuid.uuid4().hex  # type: ignore[attr-defined]
        # AWS: `creating` for a while before `available` (timing model; 0 when it is off)
        volume.lab_available_at = time.monotonic() + timing.delay("volume_create_seconds")  # type: ignore[attr-defined]
        self.volume_data[volume.id] = data
        return volume

    def _check_kms_key(self, key_id: str) -> None:
        if key_id.startswith("arn:") and f":{self.account_id}:" not in key_id:
            return  # another account's key: key policies are outside the lab's model
        from moto.kms import kms_backends

        kms = kms_backends[self.account_id][self.region_name]
        try:
            kms.describe_key(key_id)
        except Exception as exc:
            raise LabClientError(
                "InvalidParameterValue", f"Invalid KMS key id or alias: '{key_id}'"
            ) from exc

    def delete_volume(self, volume_id: str) -> Volume:
        volume = super().delete_volume(volume_id)
        data = self.volume_data.pop(volume_id, None)
        if data is not None:
            data.delete()
            firstread.remove_volume(data.path)
        return volume

    def modify_volume(
        self, volume_id: str, target_size: int | None = None, *args: Any, **kwargs: Any
    ) -> Volume:
        volume = self.get_volume(volume_id)
        if target_size is not None and int(target_size) < volume.size:
            raise LabClientError(
                "InvalidParameterValue", "New size cannot be smaller than existing size"
            )
        volume = super().modify_volume(volume_id, target_size, *args, **kwargs)
        if target_size:
            self.volume_data[volume_id].grow(int(target_size))
        return volume

    def attach_volume(
        self,
        volume_id: str,
        instance_id: str,
        device_path: str,
        delete_on_termination: bool = False,
    ) -> VolumeAttachment | None:
        volume = self.get_volume(volume_id)
        instance = self.get_instance(instance_id)
        if volume.attachment is not None:
            raise LabClientError(
                "VolumeInUse",
                f"{volume_id} is already attached to an instance",
            )
        if volume.status == "creating":  # AWS's answer while a new volume is being created
            raise LabClientError("IncorrectState", f"{volume_id} is not 'available'.")
        if instance.state in ("terminated", "shutting-down"):
            raise LabClientError(
                "IncorrectState", f"The instance '{instance_id}' is not in a valid state."
            )
        if instance.state == "pending":
            # AWS attaches to running or stopped instances only (ansible-collections/amazon.aws
            # #497, dstackai/dstack#3603: "Instance '...' is not 'running'.").
            raise LabClientError("IncorrectState", f"Instance '{instance_id}' is not 'running'.")
        if volume.zone.name != instance.availability_zone:
            raise LabClientError(
                "InvalidVolume.ZoneMismatch",
                f"The volume '{volume_id}' is not in the same availability zone as instance "
                f"'{instance_id}'",
            )
        if not device_path or not _DEVICE_RE.match(device_path):
            raise LabClientError(
                "InvalidParameterValue", f"Value ({device_path}) for parameter device is invalid."
            )
        if device_path in instance.block_device_mapping:
            raise LabClientError(
                "InvalidParameterValue",
                f"Invalid value '{device_path}' for unixDevice. Attachment point "
                f"{device_path} is already in use",
            )
        attachment = super().attach_volume(
            volume_id, instance_id, device_path, delete_on_termination
        )
        target = self.volume_data[volume_id].path
        delay = get_runtime().timing.delay("volume_attach_seconds")
        if delay <= 0 or attachment is None:
            attach_device(instance_id, volume_id, target)
            return attachment
        # AWS: `attaching` for a while; the instance sees the device once it is `attached`.
        attachment.lab_attached_at = time.monotonic() + delay  # type: ignore[attr-defined]
        timer = threading.Timer(
            delay, _finish_attach, args=(volume, attachment, instance_id, volume_id, target)
        )
        timer.daemon = True
        timer.start()
        return attachment

    def detach_volume(
        self, volume_id: str, instance_id: str | None, device_path: str | None
    ) -> VolumeAttachment:
        volume = self.get_volume(volume_id)
        if volume.attachment is None:
            raise LabClientError(
                "IncorrectState", f"Volume '{volume_id}' is in the 'available' state."
            )
        if not instance_id:  # optional on AWS; moto crashes with a 500 without it
            instance_id = volume.attachment.instance.id
        elif instance_id != volume.attachment.instance.id:
            raise LabClientError(
                "InvalidAttachment.NotFound",
                f"The volume '{volume_id}' is not attached to instance '{instance_id}'.",
            )
        device = device_path or volume.attachment.device
        with _attach_lock:  # not while a delayed attachment makes its device appear
            attachment = super().detach_volume(volume_id, instance_id, device)
            detach_device(instance_id, volume_id)
        return attachment

    # -- snapshots -----------------------------------------------------------------------
    def create_snapshot(
        self,
        volume_id: str,
        description: str,
        owner_id: str | None = None,
        from_ami: str | None = None,
    ) -> Snapshot:
        volume = self.get_volume(volume_id)
        data = self.volume_data.get(volume_id)
        block_map = data.snapshot_map() if data is not None else {}
        snapshot = Snapshot(
            self,
            random_snapshot_id(),
            volume,
            description,
            encrypted=volume.encrypted,
            kms_key_id=volume.kms_key_id,
            owner_id=owner_id,
            from_ami=from_ami,
            block_map=block_map,
            lineage=getattr(volume, "lab_lineage", ""),
        )
        self.snapshots[snapshot.id] = snapshot
        return snapshot

    def create_snapshots(  # type: ignore[override]
        self,
        instance_spec: dict[str, Any],
        description: str,
        tags: dict[str, str],
        copy_tags_from_source: str | None = None,
    ) -> list[Snapshot]:
        instance = self.get_instance(instance_spec["InstanceId"])
        if instance.state in ("terminated", "shutting-down"):
            raise LabClientError(
                "IncorrectState", f"The instance '{instance.id}' is not in a valid state."
            )
        exclude_boot = str(instance_spec.get("ExcludeBootVolume", False)).lower() == "true"
        excluded = set(instance_spec.get("ExcludeDataVolumeIds") or [])
        volume_ids = [
            m.volume_id
            for device, m in instance.get_block_device_mapping
            if not (exclude_boot and device == instance.root_device_name)
            and m.volume_id not in excluded
        ]
        # One point in time for the whole set: take every block map under the volumes' locks.
        volumes = [self.get_volume(v) for v in volume_ids]
        locks = [self.volume_data[v.id].lock for v in volumes if v.id in self.volume_data]
        for lock in locks:
            lock.acquire()
        try:
            snapshots = [self.create_snapshot(v.id, description) for v in volumes]
        finally:
            for lock in reversed(locks):
                lock.release()
        for snapshot, volume in zip(snapshots, volumes, strict=True):
            if copy_tags_from_source == "volume":
                snapshot.add_tags(
                    {
                        t["key"]: t["value"]
                        for t in volume.get_tags()
                        if not t["key"].startswith("aws:")
                    }
                )
            snapshot.add_tags(tags)
        return snapshots

    def _find_snapshot(self, snapshot_id: str, region: str | None = None) -> Any:
        """A snapshot this account may use: its own, or one shared with it (same Region)."""
        region = region or self.region_name
        own = ec2_models.ec2_backends[self.account_id][region].snapshots.get(snapshot_id)
        if own is not None:
            return own  # type: ignore[no-any-return]
        for backend in all_ec2_backends():
            if backend.region_name != region or backend.account_id == self.account_id:
                continue
            snap = backend.snapshots.get(snapshot_id)
            if snap is not None and (
                self.account_id in snap.create_volume_permission_userids
                or "all" in snap.create_volume_permission_groups
            ):
                return snap  # type: ignore[no-any-return]
        return None

    def get_snapshot(self, snapshot_id: str) -> Snapshot:
        snapshot = self._find_snapshot(snapshot_id)
        if snapshot is None:
            raise snapshot_not_found(snapshot_id)
        return snapshot  # type: ignore[no-any-return]

    def delete_snapshot(self, snapshot_id: str) -> Snapshot:
        if snapshot_id not in self.snapshots:
            raise snapshot_not_found(snapshot_id)
        # AWS: a locked snapshot cannot be deleted until its lock expires (snapshotlocks.py)
        from ec2backup_lab.snapshotlocks import check_deletable

        check_deletable(self, snapshot_id)
        # AWS: a snapshot an image is registered over cannot be deleted.
        for ami in self.amis.values():
            if snapshot_id in getattr(ami, "lab_snapshot_ids", ()):
                raise LabClientError(
                    "InvalidSnapshot.InUse",
                    f"The snapshot {snapshot_id} is currently in use by {ami.id}",
                )
        return super().delete_snapshot(snapshot_id)  # type: ignore[return-value]

    def describe_volumes(
        self, volume_ids: list[str] | None = None, filters: Any = None
    ) -> list[Volume]:
        missing = [v for v in volume_ids or [] if v not in self.volumes]
        if missing:  # moto prints a Python set into the message
            raise LabClientError(
                "InvalidVolume.NotFound", f"The volume '{missing[0]}' does not exist."
            )
        return super().describe_volumes(volume_ids, filters)

    def copy_snapshot(
        self,
        source_snapshot_id: str,
        source_region: str,
        description: str,
        kms_key_id: str | None,
        encrypted: bool = False,
    ) -> Snapshot:
        source = self._find_snapshot(source_snapshot_id, source_region)
        if source is None:
            raise LabClientError(
                "InvalidSnapshot.NotFound",
                f"The snapshot '{source_snapshot_id}' does not exist in {source_region}.",
            )
        if source.status != "completed":
            raise LabClientError(
                "IncorrectState", f"Snapshot '{source_snapshot_id}' is not 'completed'."
            )
        if source.owner_id != self.account_id and source.encrypted and _is_default_ebs_key(source):
            raise LabClientError(
                "InvalidParameterValue",
                f"Snapshot '{source_snapshot_id}' is encrypted with the AWS managed key "
                "aws/ebs and cannot be copied by another account.",
            )
        if kms_key_id:
            self._check_kms_key(kms_key_id)
        runtime = get_runtime()
        in_progress = sum(
            1
            for s in self.snapshots.values()
            if getattr(s, "lab_copy", False) and s.status == "pending"
        )
        if in_progress >= runtime.copy_snapshot_concurrency:
            raise LabClientError(
                "ResourceLimitExceeded",
                f"You have reached the limit of {runtime.copy_snapshot_concurrency} concurrent "
                f"snapshot copies in progress to {self.region_name}.",
            )
        encrypted = encrypted or source.encrypted or bool(kms_key_id)
        if encrypted and not kms_key_id:
            # AWS: an encrypted copy without KmsKeyId uses the destination's default EBS key.
            kms_key_id = self.default_kms_key_id or self._create_default_encryption_key()
        snapshot = Snapshot(
            self,
            random_snapshot_id(),
            _PhantomVolume("vol-ffffffff", source.volume_size),
            description,
            encrypted=encrypted,
            kms_key_id=kms_key_id,
            block_map=dict(source.block_map),
            lineage=source.lineage,
        )
        # A copy carries the source's content, random holes included (re-keying decrypts
        # and re-encrypts whatever the blocks hold).
        snapshot.lab_noise = getattr(source, "lab_noise", None)
        snapshot.lab_copy = True  # counted against the copies in progress while pending
        self.snapshots[snapshot.id] = snapshot
        with runtime.lock:
            key = f"{self.account_id}/{self.region_name}"
            runtime.copies_peak[key] = max(runtime.copies_peak.get(key, 0), in_progress + 1)
        return snapshot

    def visible_snapshots(self, owner_ids: list[str], restorable_by: list[str]) -> list[Any]:
        """DescribeSnapshots' default view: own snapshots plus those shared with this account."""
        own = list(self.snapshots.values())
        shared: list[Any] = []
        for backend in all_ec2_backends():
            if backend.region_name != self.region_name or backend.account_id == self.account_id:
                continue
            shared.extend(
                s
                for s in backend.snapshots.values()
                if self.account_id in s.create_volume_permission_userids
                or "all" in s.create_volume_permission_groups
            )
        result = own + shared
        if owner_ids:
            wanted = {self.account_id if o == "self" else o for o in owner_ids}
            result = [s for s in result if s.owner_id in wanted]
        if restorable_by:
            wanted = {self.account_id if r == "self" else r for r in restorable_by}
            result = [
                s
                for s in result
                if (s.owner_id in wanted and s in own)
                or wanted & s.create_volume_permission_userids
                or "all" in s.create_volume_permission_groups
            ]
        return result

    def register_image(
        self,
        name: str | None = None,
        description: str | None = None,
        *,
        architecture: str | None = None,
        boot_mode: str | None = None,
        ena_support: bool | None = None,
        root_device_name: str | None = None,
        snapshot_ids: list[str] | None = None,
        tags: dict[str, str] | None = None,
    ) -> Any:
        """AWS registers an image over the snapshots it is given and makes none of its own
        (moto makes a volume and a snapshot: dropped); it keeps the architecture, boot mode
        and ENA support it is told (moto keeps none); image names are unique per account and
        Region (InvalidAMIName.Duplicate); the snapshots stay in use while it exists."""
        for other in self.amis.values():
            if name and other.name == name and other.owner_id == self.account_id:
                raise LabClientError(
                    "InvalidAMIName.Duplicate",
                    f"AMI name {name} is already in use by AMI {other.id}",
                )
        for snapshot_id in snapshot_ids or []:
            if snapshot_id not in self.snapshots:
                raise snapshot_not_found(snapshot_id)
        self._ami_internal = True
        try:
            ami = super().register_image(name, description)
        finally:
            self._ami_internal = False
        self.snapshots.pop(ami.ebs_snapshot.id, None)
        ami.architecture = architecture or "x86_64"
        ami.boot_mode = boot_mode  # type: ignore[assignment]
        ami.ena_support = ena_support  # type: ignore[attr-defined]
        if root_device_name:
            ami.root_device_name = root_device_name
        ami.root_device_type = "ebs"
        ami.virtualization_type = "hvm"
        ami.lab_snapshot_ids = set(snapshot_ids or [])  # type: ignore[attr-defined]
        if tags:
            self.create_tags([ami.id], tags)
        return ami

    def _image_shape(self, image_id: str) -> tuple[str, str | None, bool | None]:
        ami = self.amis.get(image_id)
        if ami is not None:
            return ami.architecture or "x86_64", ami.boot_mode, getattr(ami, "ena_support", None)
        architecture, boot_mode = LAB_IMAGES.get(image_id, ("x86_64", "legacy-bios"))
        return architecture, boot_mode, True

    def _check_instance_type(
        self, instance_type: str, architecture: str, boot_mode: str | None
    ) -> None:
        """RunInstances refuses an instance type that cannot run the image (AWS's messages)."""
        try:
            types = self.describe_instance_types([instance_type])
        except Exception:
            return  # a type moto does not know: nothing to check against
        if not types:
            return
        info = types[0]
        archs = info.get("ProcessorInfo", {}).get("SupportedArchitectures", [])
        if archs and architecture not in archs:
            raise LabClientError(
                "InvalidParameterValue",
                f"The architecture '{'/'.join(archs)}' of the specified instance type does not "
                f"match the architecture '{architecture}' of the specified AMI. Specify an "
                "instance type and an AMI that have matching architectures, and try again.",
            )
        modes = info.get("SupportedBootModes", [])
        # uefi-preferred (Amazon Linux 2023) boots in either mode, as the type supports
        if boot_mode and boot_mode != "uefi-preferred" and modes and boot_mode not in modes:
            raise LabClientError(
                "Unsupported",
                f"The instance type {instance_type} does not support boot mode {boot_mode}.",
            )

    # -- instances -----------------------------------------------------------------------
    def run_instances(
        self,
        image_id: str,
        count: int,
        user_data: Any,
        security_group_names: list[str],
        **kwargs: Any,
    ) -> Any:
        # AWS: a repeated ClientToken returns the first call's reservation (idempotent retry).
        token = kwargs.get("client_token")
        if token and token != MOTO_DEFAULT_CLIENT_TOKEN and token in self.client_tokens:
            return self.reservations[self.client_tokens[token]]
        architecture, boot_mode, ena = self._image_shape(image_id)
        self._check_instance_type(
            kwargs.get("instance_type") or "m1.small", architecture, boot_mode
        )
        # moto creates and attaches the root volume inside: part of the modelled boot, not a
        # CreateVolume / AttachVolume of its own
        with untimed():
            reservation = super().run_instances(
                image_id, count, user_data, security_group_names, **kwargs
            )
        profile = {
            k: kwargs[k]
            for k in ("iam_instance_profile_name", "iam_instance_profile_arn")
            if kwargs.get(k)
        }
        for instance in reservation.instances:  # the shape the image gives the instance
            instance.architecture = architecture
            instance.boot_mode = boot_mode  # type: ignore[attr-defined]
            instance.ena_support = ena  # type: ignore[attr-defined]
            if profile:
                # AWS launches with the profile: no DescribeInstances (nor the instance's own
                # metadata) sees it without. moto associated it after the call returned, and
                # only for the first instance.
                self.associate_iam_instance_profile(instance_id=instance.id, **profile)
        if token and token != MOTO_DEFAULT_CLIENT_TOKEN:
            self.client_tokens[token] = reservation.id
        from ec2backup_lab import agents

        boot = get_runtime().timing.delay("worker_boot_seconds")
        for instance in reservation.instances:
            devices_dir(instance.id).mkdir(parents=True, exist_ok=True)
            if boot > 0:
                _boot_pending(instance, boot * PENDING_SHARE_OF_BOOT)
            agents.maybe_start(self, instance, boot_seconds=boot)
        return reservation

    def associate_iam_instance_profile(
        self,
        instance_id: str,
        iam_instance_profile_name: str | None = None,
        iam_instance_profile_arn: str | None = None,
    ) -> IamInstanceProfileAssociation:
        """Idempotent for the profile an instance was launched with (moto's RunInstances
        response associates it once more; a ClientToken retry a third time)."""
        existing = self.iam_instance_profile_associations.get(instance_id)
        if existing is not None:
            arn = existing.iam_instance_profile.arn
            if arn == iam_instance_profile_arn or arn.rsplit("/", 1)[-1] == (
                iam_instance_profile_name
            ):
                return existing
        return super().associate_iam_instance_profile(
            instance_id=instance_id,
            iam_instance_profile_name=iam_instance_profile_name,
            iam_instance_profile_arn=iam_instance_profile_arn,
        )

    def terminate_instances(self, instance_ids: list[str]) -> Any:
        from ec2backup_lab import agents

        result = super().terminate_instances(instance_ids)
        for instance_id in instance_ids:
            agents.stop(instance_id)
        return result

    def stop_instances(self, instance_ids: list[str]) -> Any:
        from ec2backup_lab import agents

        result = super().stop_instances(instance_ids)
        for instance_id in instance_ids:
            agents.stop(instance_id)
        return result


def _boot_pending(instance: Any, seconds: float) -> None:
    """AWS: an instance is `pending` (code 0) for a while before `running` (timing model)."""
    instance._state.name, instance._state.code = "pending", 0

    def _running() -> None:
        if instance._state.name == "pending":  # not stopped or terminated meanwhile
            instance._state.name, instance._state.code = "running", 16

    timer = threading.Timer(seconds, _running)
    timer.daemon = True
    timer.start()


def _is_default_ebs_key(snapshot: Any) -> bool:
    from moto.kms import kms_backends

    owner_backend = ec2_models.ec2_backends[snapshot.owner_id][snapshot.ec2_backend.region_name]
    if not snapshot.kms_key_id:
        return False
    if snapshot.kms_key_id == owner_backend.default_kms_key_id:
        return True
    kms = kms_backends[snapshot.owner_id][snapshot.ec2_backend.region_name]
    try:
        alias_target = kms.describe_key("alias/aws/ebs").arn
    except Exception:
        return False
    return bool(snapshot.kms_key_id == alias_target)


# -- response handlers: parameters moto ignores -----------------------------------------------
def _create_snapshots(self: ElasticBlockStore) -> ActionResult:
    instance_spec = self._get_param("InstanceSpecification", {})
    description = self._get_param("Description", "")
    tags = self._parse_tag_specification().get("snapshot", {})
    copy_tags = self._get_param("CopyTagsFromSource")
    self.error_on_dryrun()
    snapshots = self.ec2_backend.create_snapshots(
        instance_spec, description, tags, copy_tags_from_source=copy_tags
    )
    return ActionResult(
        {
            "Snapshots": [
                {
                    "SnapshotId": s.id,
                    "VolumeId": s.volume.id,
                    "State": s.status,
                    "StartTime": s.start_time,
                    "Progress": s.progress,
                    "OwnerId": s.owner_id,
                    "Encrypted": s.encrypted,
                    "VolumeSize": s.volume_size,
                    "Description": s.description,
                    "Tags": s.tag_set,
                }
                for s in snapshots
            ]
        }
    )


def _copy_snapshot(self: ElasticBlockStore) -> ActionResult:
    source_snapshot_id = self._get_param("SourceSnapshotId")
    source_region = self._get_param("SourceRegion")
    description = self._get_param("Description")
    snapshot_tags = self._parse_tag_specification().get("snapshot", {})
    kms_key_id = self._get_param("KmsKeyId")
    encrypted = self._get_bool_param("Encrypted", False)
    self.error_on_dryrun()
    snapshot = self.ec2_backend.copy_snapshot(
        source_snapshot_id=source_snapshot_id,
        source_region=source_region,
        description=description,
        kms_key_id=kms_key_id,
        encrypted=encrypted,
    )
    snapshot.add_tags(snapshot_tags)
    return ActionResult({"SnapshotId": snapshot.id, "Tags": snapshot.tag_set})


def _modify_snapshot_attribute(self: ElasticBlockStore) -> ActionResult:
    snapshot_id = self._get_param("SnapshotId")
    operation_type = self._get_param("OperationType")
    groups = list(self._get_param("GroupNames", []))
    user_ids = list(self._get_param("UserIds", []))
    permission = self._get_param("CreateVolumePermission", {}) or {}
    self.error_on_dryrun()
    backend = self.ec2_backend
    snapshot = backend.snapshots.get(snapshot_id)
    if snapshot is None:
        raise snapshot_not_found(snapshot_id)
    add_users = [p["UserId"] for p in permission.get("Add", []) if p.get("UserId")]
    add_groups = [p["Group"] for p in permission.get("Add", []) if p.get("Group")]
    remove_users = [p["UserId"] for p in permission.get("Remove", []) if p.get("UserId")]
    remove_groups = [p["Group"] for p in permission.get("Remove", []) if p.get("Group")]
    if operation_type == "add":
        add_users += user_ids
        add_groups += groups
    elif operation_type == "remove":
        remove_users += user_ids
        remove_groups += groups
    if (add_users or add_groups) and snapshot.encrypted and _is_default_ebs_key(snapshot):
        raise LabClientError(
            "OperationNotPermitted",
            f"Snapshot '{snapshot_id}' is encrypted with the AWS managed key aws/ebs and "
            "cannot be shared.",
        )
    if add_users or add_groups:
        backend.add_create_volume_permission(snapshot_id, user_ids=add_users, groups=add_groups)
    if remove_users or remove_groups:
        backend.remove_create_volume_permission(
            snapshot_id, user_ids=remove_users, groups=remove_groups
        )
    return EmptyResult()


def _describe_snapshots(self: ElasticBlockStore) -> ActionResult:
    filters = self._filters_from_querystring()
    snapshot_ids = self._get_param("SnapshotIds", [])
    owner_ids = self._get_param("OwnerIds", [])
    restorable_by = self._get_param("RestorableByUserIds", [])
    max_results = self._get_param("MaxResults")
    next_token = self._get_param("NextToken")
    backend: LabEC2Backend = self.ec2_backend
    if snapshot_ids:
        found = [backend._find_snapshot(s) for s in snapshot_ids]
        if any(s is None for s in found):
            missing = [i for i, s in zip(snapshot_ids, found, strict=True) if s is None]
            raise LabClientError(
                "InvalidSnapshot.NotFound", f"The snapshot '{missing[0]}' does not exist."
            )
        snapshots = [s for s in found if s is not None]
    else:
        snapshots = backend.visible_snapshots(owner_ids, restorable_by)
    if filters:
        from moto.ec2.utils import generic_filter

        snapshots = generic_filter(filters, snapshots)
    snapshots.sort(key=lambda s: (s.start_time, s.id))
    start = int(next_token) if next_token else 0
    page: list[Any] = snapshots[start:]
    result: dict[str, Any] = {}
    if max_results:
        limit = int(max_results)
        if snapshot_ids:
            raise LabClientError(
                "InvalidParameterCombination", "MaxResults cannot be combined with SnapshotIds"
            )
        if not 5 <= limit <= 1000:
            raise LabClientError(
                "InvalidParameterValue", f"Value ({limit}) for parameter maxResults is invalid."
            )
        if len(page) > limit:
            result["NextToken"] = str(start + limit)
        page = page[:limit]
    result["Snapshots"] = page
    return ActionResult(result)


def _detach_volume(self: ElasticBlockStore) -> ActionResult:
    volume_id = self._get_param("VolumeId")
    instance_id = self._get_param("InstanceId")
    device_path = self._get_param("Device")
    self.error_on_dryrun()
    attachment = self.ec2_backend.detach_volume(volume_id, instance_id, device_path)
    return ActionResult(
        {
            "VolumeId": attachment.volume.id,
            "InstanceId": attachment.instance.id,
            "Device": attachment.device,
            "State": "detaching",
            "AttachTime": attachment.attach_time,
        }
    )


def _get_ebs_default_kms_key_id(self: ElasticBlockStore) -> ActionResult:
    backend = self.ec2_backend
    return ActionResult(
        {"KmsKeyId": backend.default_kms_key_id or backend._create_default_encryption_key()}
    )


def _delete_volume(self: ElasticBlockStore) -> ActionResult:
    volume_id = self._get_param("VolumeId")
    self.error_on_dryrun()
    if volume_id not in self.ec2_backend.volumes:
        raise InvalidVolumeIdError(volume_id)
    self.ec2_backend.delete_volume(volume_id)
    return EmptyResult()


def _register_image(self: AmisResponse) -> ActionResult:
    """RegisterImage with what moto's handler drops: shape, root device, snapshots, tags."""
    self.error_on_dryrun()
    mappings = self._get_param("BlockDeviceMappings", []) or []
    snapshot_ids = [m["Ebs"]["SnapshotId"] for m in mappings if m.get("Ebs", {}).get("SnapshotId")]
    image = self.ec2_backend.register_image(
        self._get_param("Name"),
        self._get_param("Description", ""),
        architecture=self._get_param("Architecture"),
        boot_mode=self._get_param("BootMode"),
        ena_support=self._get_bool_param("EnaSupport"),
        root_device_name=self._get_param("RootDeviceName"),
        snapshot_ids=snapshot_ids,
        tags=self._parse_tag_specification().get("image", {}),
    )
    return ActionResult({"ImageId": image.id})


_INSTALLED = False


def install() -> None:
    """Swap in the lab backend and handlers (idempotent; survives `/moto-api/reset`)."""
    global _INSTALLED
    if _INSTALLED:
        return
    ec2_models.ec2_backends.backend = LabEC2Backend
    ElasticBlockStore.create_snapshots = _create_snapshots  # type: ignore[method-assign]
    ElasticBlockStore.copy_snapshot = _copy_snapshot  # type: ignore[method-assign]
    ElasticBlockStore.modify_snapshot_attribute = _modify_snapshot_attribute  # type: ignore[method-assign]
    ElasticBlockStore.describe_snapshots = _describe_snapshots  # type: ignore[method-assign]
    ElasticBlockStore.detach_volume = _detach_volume  # type: ignore[method-assign]
    ElasticBlockStore.delete_volume = _delete_volume  # type: ignore[method-assign]
    ElasticBlockStore.get_ebs_default_kms_key_id = _get_ebs_default_kms_key_id  # type: ignore[attr-defined]
    AmisResponse.register_image = _register_image  # type: ignore[method-assign]
    # States that last a while on AWS (timing model): `creating` volumes, `attaching` ones.
    Volume.status = property(_volume_status)  # type: ignore[assignment,method-assign]
    VolumeAttachment.status = property(_attachment_status, _set_attachment_status)  # type: ignore[assignment]
    from ec2backup_lab import snapshotlocks

    snapshotlocks.install()
    _INSTALLED = True

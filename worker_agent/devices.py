"""Block devices of the worker instance, and an accounting of what the agent reads from them.

On a Nitro instance a volume attached as `/dev/sdf` appears as an NVMe device (`/dev/nvme1n1`)
whose serial is the volume id, with the udev link
`/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123...`; NVMe numbers follow enumeration
order, not the attachment order, and `/dev/sdf` exists only where the AMI's udev rules create
it. So the agent finds a volume by its id (the by-id link), falls back to the attachment's
device name (`/dev/sdf`, `/dev/xvdf`: Xen instances, AMIs with the rules), and checks that the
device it opened is that volume and has the snapshot's size. In the lab `EC2BACKUP_DEVICE_DIR`
stands for `/dev` (with `by-id/` for `/dev/disk/by-id/`).

Every read goes through `DeviceReader.read_block`, which counts bytes per volume and publishes
the totals to `EC2BACKUP_AGENT_IO_FILE` (the lab's metrics read it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

from ec2backup.errors import UserError

EBS_BLOCK_SIZE = 512 * 1024
# How often read counters are published; cheap, and fresh enough for metrics after a session.
IO_FLUSH_INTERVAL_SECONDS = 0.5

_io_lock = threading.Lock()
_io_totals: dict[str, int] = {}
_io_last_flush = 0.0


NVME_BY_ID_PREFIX = "nvme-Amazon_Elastic_Block_Store_"


class DeviceMismatch(UserError):
    """The device is not (or no longer) the volume it should be, or reads short: the range
    fails and nothing of it is committed."""


def _by_id_dir() -> Path:
    lab_dir = os.environ.get("EC2BACKUP_DEVICE_DIR")
    return Path(lab_dir) / "by-id" if lab_dir else Path("/dev/disk/by-id")


def resolve_device(device: str) -> Path:
    """The path of an attachment's device name (e.g. /dev/sdf, or its /dev/xvdf form)."""
    name = device.rsplit("/", 1)[-1]
    lab_dir = os.environ.get("EC2BACKUP_DEVICE_DIR")
    if lab_dir:
        return Path(lab_dir) / name
    for candidate in (Path("/dev") / name, Path("/dev") / name.replace("sd", "xvd", 1)):
        if candidate.exists():
            return candidate
    return Path("/dev") / name


def find_volume(volume_id: str | None, device: str) -> Path:
    """The device of `volume_id` (by its NVMe by-id link), else of the attachment `device`;
    raises DeviceMismatch if what is there is another volume or nothing."""
    if volume_id:
        by_id = _by_id_dir() / (NVME_BY_ID_PREFIX + volume_id.replace("-", ""))
        if by_id.exists():
            path = by_id.resolve()
            found = volume_id_of(path)  # the device's own serial, not the link's name
            if found.startswith("vol-") and found != volume_id:
                raise DeviceMismatch(f"volume {volume_id}: its by-id link leads to {found}")
            return path
    path = resolve_device(device)
    if not path.exists():
        raise DeviceMismatch(
            f"volume {volume_id or '?'}: no device found (no by-id link, nothing at {device})"
        )
    if volume_id:
        found = volume_id_of(path)
        if found.startswith("vol-") and found != volume_id:
            raise DeviceMismatch(f"volume {volume_id}: {device} is volume {found}")
    return path


def volume_id_of(path: Path) -> str:
    """The EBS volume id behind a device path (lab: the file name; EC2: the NVMe serial)."""
    target = path.resolve()
    if target.name.startswith("vol-"):
        return target.name.split(".", 1)[0]
    serial = Path("/sys/block") / target.name / "device" / "serial"
    if serial.exists():
        raw = serial.read_text().strip()
        return raw.replace("vol", "vol-", 1) if not raw.startswith("vol-") else raw
    return target.name


def _account(volume_id: str, nbytes: int) -> None:
    global _io_last_flush
    io_file = os.environ.get("EC2BACKUP_AGENT_IO_FILE")
    with _io_lock:
        _io_totals[volume_id] = _io_totals.get(volume_id, 0) + nbytes
        now = time.monotonic()
        if not io_file or now - _io_last_flush < IO_FLUSH_INTERVAL_SECONDS:
            return
        _io_last_flush = now
        totals = dict(_io_totals)
    _publish(io_file, totals)


def _publish(io_file: str, totals: dict[str, int]) -> None:
    tmp = f"{io_file}.tmp"
    with open(tmp, "w") as f:
        json.dump({"volumes": totals}, f)
    os.replace(tmp, io_file)


def flush_io() -> None:
    io_file = os.environ.get("EC2BACKUP_AGENT_IO_FILE")
    if io_file:
        with _io_lock:
            totals = dict(_io_totals)
        _publish(io_file, totals)


class DeviceReader:
    """Reads 512 KiB blocks from one attached volume, counting every byte.

    With `volume_id` the volume is found by id and `verify()` (called at every checkpoint)
    checks it is still the same device with the same size; with `size` the device must have
    exactly that many bytes (the snapshot's volume size). A short read fails with the volume's
    name instead of being padded."""

    def __init__(self, device: str, volume_id: str | None = None, size: int | None = None) -> None:
        self.device = device
        self.path = find_volume(volume_id, device)
        self.volume_id = volume_id or volume_id_of(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self._identity = self._stat_identity(os.fstat(self._fd))
        self.size = os.lseek(self._fd, 0, os.SEEK_END)
        self.expected_size = size
        if size is not None and self.size != size:
            os.close(self._fd)
            raise DeviceMismatch(
                f"volume {self.volume_id} at {self.path}: {self.size} bytes, but its snapshot "
                f"is {size} bytes"
            )

    @staticmethod
    def _stat_identity(st: os.stat_result) -> tuple[int, int]:
        return st.st_dev, st.st_ino

    def read_block(self, index: int) -> bytes:
        offset = index * EBS_BLOCK_SIZE
        data = os.pread(self._fd, EBS_BLOCK_SIZE, offset)
        _account(self.volume_id, len(data))
        want = min(EBS_BLOCK_SIZE, (self.expected_size or self.size) - offset)
        if len(data) < want:
            raise DeviceMismatch(
                f"volume {self.volume_id} at {self.path}: short read at block {index} "
                f"({len(data)} of {want} bytes): the device shrank or went away"
            )
        return data

    def verify(self) -> None:
        """Still the same device, still its size (a swapped or shrunk device fails here)."""
        try:
            now = find_volume(self.volume_id, self.device)
            identity = self._stat_identity(os.stat(now))
        except DeviceMismatch as exc:
            raise DeviceMismatch(
                f"volume {self.volume_id}: the device changed under the transfer ({exc})"
            ) from exc
        except OSError as exc:
            raise DeviceMismatch(f"volume {self.volume_id}: device went away ({exc})") from exc
        if identity != self._identity:
            raise DeviceMismatch(
                f"volume {self.volume_id}: the device at {now} changed under the transfer"
            )
        size = os.fstat(self._fd).st_size or os.lseek(self._fd, 0, os.SEEK_END)
        if size != self.size:
            raise DeviceMismatch(
                f"volume {self.volume_id}: device size changed from {self.size} to {size} bytes"
            )

    def close(self) -> None:
        os.close(self._fd)
        flush_io()

    def __enter__(self) -> DeviceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

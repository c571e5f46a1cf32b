"""Block devices of the worker instance, and an accounting of what the agent reads from them.

On EC2 a volume attached as `/dev/sdf` appears as `/dev/xvdf` or as an NVMe device whose
serial is the volume id; in the lab, `EC2BACKUP_DEVICE_DIR` holds one link per device name.
Every read goes through `DeviceReader.read_block`, which counts bytes per volume and publishes
the totals to `EC2BACKUP_AGENT_IO_FILE` (the lab's metrics read it).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

EBS_BLOCK_SIZE = 512 * 1024
# How often read counters are published; cheap, and fresh enough for metrics after a session.
IO_FLUSH_INTERVAL_SECONDS = 0.5

_io_lock = threading.Lock()
_io_totals: dict[str, int] = {}
_io_last_flush = 0.0


def resolve_device(device: str) -> Path:
    """The path to read for an attachment's device name (e.g. /dev/sdf)."""
    name = device.rsplit("/", 1)[-1]
    lab_dir = os.environ.get("EC2BACKUP_DEVICE_DIR")
    if lab_dir:
        return Path(lab_dir) / name
    for candidate in (Path("/dev") / name, Path("/dev") / name.replace("sd", "xvd", 1)):
        if candidate.exists():
            return candidate
    return Path("/dev") / name


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
    """Reads 512 KiB blocks from one attached device, counting every byte."""

    def __init__(self, device: str) -> None:
        self.path = resolve_device(device)
        self.volume_id = volume_id_of(self.path)
        self._fd = os.open(self.path, os.O_RDONLY)
        self.size = os.lseek(self._fd, 0, os.SEEK_END)

    def read_block(self, index: int) -> bytes:
        data = os.pread(self._fd, EBS_BLOCK_SIZE, index * EBS_BLOCK_SIZE)
        _account(self.volume_id, len(data))
        return data

    def close(self) -> None:
        os.close(self._fd)
        flush_io()

    def __enter__(self) -> DeviceReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

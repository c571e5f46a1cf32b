"""The agent's device checks on a device directory laid out like a Nitro instance's
(`EC2BACKUP_DEVICE_DIR` with `nvme<k>n1` and `by-id/` links, as the lab makes them): found by
volume id, size checked, a swapped or shrunk device or a short read fails naming the volume."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from worker_agent.devices import DeviceMismatch, DeviceReader, find_volume

BLOCK = 512 * 1024
SIZE = 8 * BLOCK


def _volume(root: Path, volume_id: str, fill: bytes, size: int = SIZE) -> Path:
    path = root / "volumes" / f"{volume_id}.img"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(fill * (size // len(fill)))
    return path


def _attach(devices: Path, number: int, volume_id: str, target: Path) -> None:
    (devices / "by-id").mkdir(parents=True, exist_ok=True)
    nvme = devices / f"nvme{number}n1"
    nvme.unlink(missing_ok=True)
    nvme.symlink_to(target)
    link = devices / "by-id" / f"nvme-Amazon_Elastic_Block_Store_{volume_id.replace('-', '')}"
    link.unlink(missing_ok=True)
    link.symlink_to(Path("..") / nvme.name)


@pytest.fixture
def devices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "devices"
    root.mkdir()
    monkeypatch.setenv("EC2BACKUP_DEVICE_DIR", str(root))
    return root


def test_found_by_volume_id_not_by_attachment_name(devices: Path, tmp_path: Path) -> None:
    a = _volume(tmp_path, "vol-0aaa", b"a")
    b = _volume(tmp_path, "vol-0bbb", b"b")
    _attach(devices, 26, "vol-0aaa", a)  # attached first, numbered last
    _attach(devices, 25, "vol-0bbb", b)
    with DeviceReader("/dev/sdf", "vol-0aaa", SIZE) as reader:
        assert reader.read_block(3) == b"a" * BLOCK
    with DeviceReader("/dev/sdg", "vol-0bbb", SIZE) as reader:
        assert reader.read_block(0) == b"b" * BLOCK
    with pytest.raises(DeviceMismatch, match="vol-0ccc"):
        find_volume("vol-0ccc", "/dev/sdh")


def test_a_device_of_another_size_is_refused(devices: Path, tmp_path: Path) -> None:
    _attach(devices, 26, "vol-0aaa", _volume(tmp_path, "vol-0aaa", b"a", size=4 * BLOCK))
    with pytest.raises(DeviceMismatch, match=r"vol-0aaa.*snapshot is 4194304 bytes"):
        DeviceReader("/dev/sdf", "vol-0aaa", SIZE)


def test_a_swapped_device_fails_verification(devices: Path, tmp_path: Path) -> None:
    a = _volume(tmp_path, "vol-0aaa", b"a")
    _attach(devices, 26, "vol-0aaa", a)
    with DeviceReader("/dev/sdf", "vol-0aaa", SIZE) as reader:
        reader.verify()
        _attach(devices, 26, "vol-0aaa", _volume(tmp_path, "vol-0zzz", b"z"))  # swapped under us
        with pytest.raises(DeviceMismatch, match=r"vol-0aaa.*changed"):
            reader.verify()


def test_a_shrunk_device_fails_reads_and_verification(devices: Path, tmp_path: Path) -> None:
    a = _volume(tmp_path, "vol-0aaa", b"a")
    _attach(devices, 26, "vol-0aaa", a)
    with DeviceReader("/dev/sdf", "vol-0aaa", SIZE) as reader:
        os.truncate(a, 2 * BLOCK + 100)
        assert reader.read_block(1) == b"a" * BLOCK
        with pytest.raises(DeviceMismatch, match=r"vol-0aaa.*short read at block 2"):
            reader.read_block(2)
        with pytest.raises(DeviceMismatch, match=r"vol-0aaa.*size changed"):
            reader.verify()


def test_a_by_id_link_to_another_volume_is_refused(devices: Path, tmp_path: Path) -> None:
    """The link says vol-0aaa, the device behind it is vol-0zzz (its serial): refused."""
    _attach(devices, 26, "vol-0aaa", _volume(tmp_path, "vol-0zzz", b"z"))
    with pytest.raises(DeviceMismatch, match=r"vol-0aaa.*vol-0zzz"):
        DeviceReader("/dev/sdf", "vol-0aaa", SIZE)

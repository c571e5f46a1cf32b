"""The lab control API under `/_lab/` (JSON); `ec2backup lab ...` commands call it over HTTP.

Routes (method path -> what):
  GET  health                         liveness
  GET|POST config                     settings (snapshot_pending_seconds, s3_restore_reads,
                                      the timing model's knobs: timing.py)
  POST seed                           instances with data volumes (see `SeedRequest`)
  POST churn                          overwrite about F of a volume's blocks
  POST encrypt-attack                 overwrite F of a volume's written blocks with random bytes
  GET  checksum/<vol-or-snap-id>      SHA-256 of the whole logical content
  GET  metrics                        API calls (and those refused by a throttle), blocks
                                      served, agent reads, resources,
                                      EBS direct requests / throttled / peak rate
  POST metrics {"reset": true}        counters (API calls, blocks served, EBS direct) to zero
  POST fault                          inject errors / throttling, or clear them
  POST kill-instance                  kill an instance's agent like a lost host
  GET  instances/<id>/devices         device name -> volume id and file path
  GET  volumes/<id>                   where a volume's bytes are
  POST reset                          wipe every account, Region and lab file
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from typing import Any

import boto3
import moto.ec2.models as ec2_models
from botocore.config import Config
from pydantic import BaseModel, Field, ValidationError, field_validator

from ec2backup_lab import agents, timing
from ec2backup_lab import sts as lab_sts
from ec2backup_lab.awserrors import ControlError
from ec2backup_lab.blockstore import EBS_BLOCK_SIZE, ZERO_BLOCK, noise_digest
from ec2backup_lab.content import ContentGenerator, layout
from ec2backup_lab.ec2ext import (
    LAB_INSTANCE_TYPES,
    LabEC2Backend,
    all_ec2_backends,
    by_id_name,
    devices_dir,
    lab_image,
)
from ec2backup_lab.runtime import Fault, Throttle, get_runtime

# Marks the lab's own loopback calls (seeding): not counted in metrics, never faulted.
INTERNAL_HEADER = "x-ec2backup-lab-internal"
DEFAULT_ACCOUNT = "123456789012"
# Seeded volumes go on the first data device names AWS recommends for Linux.
DATA_DEVICES = [f"/dev/sd{c}" for c in "fghijklmnop"]
MAX_SEED_INSTANCES, MAX_SEED_VOLUMES, MAX_VOLUME_GIB = 50, len(DATA_DEVICES), 16384


class SeedRequest(BaseModel):
    instances: int = Field(1, ge=1, le=MAX_SEED_INSTANCES)
    volumes: int = Field(1, ge=0, le=MAX_SEED_VOLUMES)
    size_gib: int = Field(1, ge=1, le=MAX_VOLUME_GIB)
    region: str = "us-east-1"
    account: str = DEFAULT_ACCOUNT
    tags: dict[str, str] = Field(default_factory=dict)
    encryption: str = "none"
    fill: float = Field(0.25, ge=0.0, le=1.0)
    seed: int = 1
    instance_type: str | None = None  # default: the lab's type of the architecture
    arch: str = "x86_64"
    boot_mode: str | None = None  # default: uefi on arm64 (Graviton boots only so), else bios

    @field_validator("arch")
    @classmethod
    def _arch(cls, value: str) -> str:
        if value not in LAB_INSTANCE_TYPES:
            raise ValueError(f"must be one of {', '.join(LAB_INSTANCE_TYPES)}")
        return value

    @field_validator("boot_mode")
    @classmethod
    def _boot_mode(cls, value: str | None) -> str | None:
        if value not in (None, "uefi", "legacy-bios"):
            raise ValueError("must be uefi or legacy-bios")
        return value

    @field_validator("encryption")
    @classmethod
    def _encryption(cls, value: str) -> str:
        if value not in ("none", "default-key", "cmk"):
            raise ValueError("must be one of none, default-key, cmk")
        return value

    @field_validator("account")
    @classmethod
    def _account(cls, value: str) -> str:
        if not (value.isdigit() and len(value) == 12):
            raise ValueError("must be a 12-digit AWS account id")
        return value


class ChurnRequest(BaseModel):
    volume_id: str
    fraction: float = Field(..., gt=0.0, le=1.0)
    seed: int = 1
    # Overwrite one contiguous region in the middle of the data with zeros (a zeroed file, a
    # discarded database extent): written blocks that hold zeros, as an instance writes them.
    zeros: bool = False


def _client(service: str, region: str, account: str) -> Any:
    runtime = get_runtime()
    client = boto3.client(  # type: ignore[call-overload]
        service,
        endpoint_url=runtime.endpoint_url,
        region_name=region,
        aws_access_key_id="lab",
        aws_secret_access_key="lab",
        config=Config(retries={"max_attempts": 1}),
    )

    def _add_account(request: Any, **_: Any) -> None:
        request.headers["x-moto-account-id"] = account
        request.headers[INTERNAL_HEADER] = "1"

    client.meta.events.register("before-sign.*.*", _add_account)
    return client


def _validation_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    field = ".".join(str(p) for p in err["loc"]) or "request"
    return f"{field}: {err['msg']}"


def _parse(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body or {})
    except ValidationError as exc:
        raise ControlError(400, _validation_message(exc)) from exc


def seed(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    req: SeedRequest = _parse(SeedRequest, body)
    ec2 = _client("ec2", req.region, req.account)
    try:
        zone = ec2.describe_availability_zones()["AvailabilityZones"][0]["ZoneName"]
    except Exception as exc:
        raise ControlError(400, f"region: unknown Region '{req.region}'") from exc
    kms_key_id = None
    if req.encryption == "cmk":
        kms = _client("kms", req.region, req.account)
        kms_key_id = kms.create_key(Description="ec2backup lab CMK")["KeyMetadata"]["Arn"]
    try:
        image_id = lab_image(req.arch, req.boot_mode)
    except ValueError as exc:
        raise ControlError(400, f"boot_mode: {exc} (arm64 instances boot only uefi)") from exc
    gen = ContentGenerator(req.seed)
    rng = random.Random(req.seed)
    tags = [{"Key": k, "Value": v} for k, v in req.tags.items()]
    out = []
    for n in range(req.instances):
        run = ec2.run_instances(
            ImageId=image_id,
            MinCount=1,
            MaxCount=1,
            InstanceType=req.instance_type or LAB_INSTANCE_TYPES[req.arch],
            Placement={"AvailabilityZone": zone},
            TagSpecifications=[
                {
                    "ResourceType": "instance",
                    "Tags": [*tags, {"Key": "Name", "Value": f"lab-{n + 1}"}],
                }
            ],
        )
        instance_id = run["Instances"][0]["InstanceId"]
        backend: Any = ec2_models.ec2_backends[req.account][req.region]
        volumes = []
        for v in range(req.volumes):
            params: dict[str, Any] = {
                "AvailabilityZone": zone,
                "Size": req.size_gib,
                "VolumeType": "gp3",
            }
            if req.encryption != "none":
                params["Encrypted"] = True
            if kms_key_id:
                params["KmsKeyId"] = kms_key_id
            if tags:
                params["TagSpecifications"] = [{"ResourceType": "volume", "Tags": tags}]
            volume_id = ec2.create_volume(**params)["VolumeId"]
            data = backend.volume_data[volume_id]
            blocks: dict[int, bytes] = {}
            for start, length in layout(rng, data.blocks_total, req.fill):
                for index in range(start, start + length):
                    blocks[index] = gen.block(f"{volume_id}:{index}", rng.random())
                    if len(blocks) >= 64:  # bounded memory: 32 MiB per write batch
                        data.write_blocks(blocks)
                        blocks = {}
            data.write_blocks(blocks)
            device = DATA_DEVICES[v]
            ec2.attach_volume(VolumeId=volume_id, InstanceId=instance_id, Device=device)
            volumes.append({"volume_id": volume_id, "device": device, "size_gib": req.size_gib})
        out.append(
            {
                "instance_id": instance_id,
                "region": req.region,
                "account": req.account,
                "architecture": req.arch,
                "image_id": image_id,
                "volumes": volumes,
            }
        )
    return 200, {"instances": out}


def _find_volume(volume_id: str) -> tuple[LabEC2Backend, Any]:
    for backend in all_ec2_backends():
        if volume_id in backend.volumes:
            return backend, backend.volumes[volume_id]  # type: ignore[return-value]
    raise ControlError(404, f"volume '{volume_id}' does not exist in any account or Region")


def _find_snapshot(snapshot_id: str) -> Any:
    for backend in all_ec2_backends():
        if snapshot_id in backend.snapshots:
            return backend.snapshots[snapshot_id]
    raise ControlError(404, f"snapshot '{snapshot_id}' does not exist in any account or Region")


def churn(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    req: ChurnRequest = _parse(ChurnRequest, body)
    backend, _volume = _find_volume(req.volume_id)
    data = backend.volume_data[req.volume_id]
    data.refresh()
    rng = random.Random(req.seed)
    gen = ContentGenerator(req.seed)
    count = max(1, round(data.blocks_total * req.fraction))
    written = sorted(data.current)
    if req.zeros:
        middle = written[len(written) // 2] if written else data.blocks_total // 2
        first = max(0, min(data.blocks_total - count, middle - count // 2))
        zeroed = {index: ZERO_BLOCK for index in range(first, first + count)}
        data.write_blocks(zeroed)
        return 200, {
            "volume_id": req.volume_id,
            "blocks": sorted(zeroed),
            "bytes": len(zeroed) * EBS_BLOCK_SIZE,
            "zeros": True,
        }
    empty_wanted = count // 4  # some previously empty blocks, like new files
    chosen = set(rng.sample(written, min(len(written), count - empty_wanted)))
    while len(chosen) < min(count, data.blocks_total):
        chosen.add(rng.randrange(data.blocks_total))
    blocks = {}
    for index in sorted(chosen):
        key = f"churn:{req.seed}:{req.volume_id}:{index}"
        blocks[index] = gen.text_block(key) if rng.random() < 0.6 else gen.random_block(key)
    data.write_blocks(blocks)
    return 200, {
        "volume_id": req.volume_id,
        "blocks": sorted(blocks),
        "bytes": len(blocks) * EBS_BLOCK_SIZE,
    }


class EncryptAttackRequest(BaseModel):
    volume_id: str
    fraction: float = Field(..., gt=0.0, le=1.0)
    seed: int = 1


def encrypt_attack(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    """What ransomware does to a volume: files encrypted in place, so a share of the blocks
    that hold data are rewritten with ciphertext (random bytes), none left compressible."""
    req: EncryptAttackRequest = _parse(EncryptAttackRequest, body)
    backend, _volume = _find_volume(req.volume_id)
    data = backend.volume_data[req.volume_id]
    data.refresh()
    rng = random.Random(req.seed)
    gen = ContentGenerator(req.seed)
    written = sorted(data.current)
    count = min(len(written), max(1, round(data.blocks_total * req.fraction)))
    chosen = sorted(rng.sample(written, count))
    blocks = {
        index: gen.random_block(f"encrypted:{req.seed}:{req.volume_id}:{index}") for index in chosen
    }
    data.write_blocks(blocks)
    return 200, {
        "volume_id": req.volume_id,
        "blocks": chosen,
        "bytes": len(blocks) * EBS_BLOCK_SIZE,
    }


def checksum(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    if not parts:
        raise ControlError(400, "usage: /_lab/checksum/<volume-or-snapshot-id>")
    resource_id = parts[0]
    digest = hashlib.sha256()
    if resource_id.startswith("vol-"):
        backend, _ = _find_volume(resource_id)
        data = backend.volume_data[resource_id]
        with data.lock, open(data.path, "rb") as f:
            while chunk := f.read(8 * EBS_BLOCK_SIZE):
                digest.update(chunk)
        size = data.size_bytes
    elif resource_id.startswith("snap-"):
        snap = _find_snapshot(resource_id)
        store = get_runtime().block_store
        size = snap.volume_size * 1024**3
        noise = getattr(snap, "lab_noise", None)
        for index in range(size // EBS_BLOCK_SIZE):
            h = snap.block_map.get(index)
            if h is None and noise is not None:  # an encrypted EBS-direct hole: random
                h = noise_digest(noise, index)
            digest.update(store.read(h) if h else ZERO_BLOCK)
    else:
        raise ControlError(400, f"'{resource_id}' is neither a volume nor a snapshot id")
    return 200, {"id": resource_id, "sha256": digest.hexdigest(), "size_bytes": size}


def _agent_reads() -> dict[str, int]:
    totals: dict[str, int] = {}
    root = get_runtime().root / "instances"
    if not root.exists():
        return totals
    for io_file in root.glob("*/agent-io.json"):
        try:
            volumes = json.loads(io_file.read_text()).get("volumes", {})
        except (OSError, ValueError):
            continue
        for volume_id, n in volumes.items():
            totals[volume_id] = totals.get(volume_id, 0) + int(n)
    return totals


def metrics(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    runtime = get_runtime()
    if method == "POST":
        if not (body or {}).get("reset"):
            raise ControlError(400, 'POST metrics takes {"reset": true}')
        reset_counters()
        return 200, {"reset": True}
    running, volumes = 0, 0
    for backend in all_ec2_backends():
        running += sum(1 for i in backend.all_instances() if i.state == "running")
        volumes += len(backend.volumes)
    with runtime.lock:
        calls = dict(runtime.api_calls)
        throttled = dict(runtime.throttled_calls)
        served = runtime.blocks_served
    reads = _agent_reads()
    return 200, {
        "api_calls": calls,
        "throttled_calls": throttled,  # refused by `lab fault --throttle`, per API
        "get_snapshot_block_calls": calls.get("GetSnapshotBlock", 0),
        "blocks_served": served,
        "agent_bytes_read": reads,
        "agent_bytes_read_total": sum(reads.values()),
        "running_instances": running,
        "volumes": volumes,
        "agents": agents.running(),
        # per EBS direct API: requests, throttled ones, the most admitted in any 1-second
        # window (per account and Region, and the most for one snapshot), the limits in effect
        "ebs_direct": timing.ebs_metrics(runtime.timing, runtime.ebs_meter),
        # the most snapshot copies in progress at once, per "account/Region" (destination)
        "copies_in_progress_peak": dict(runtime.copies_peak),
    }


def reset_counters() -> None:
    """API call counts, blocks served and the EBS direct meter start again from zero."""
    runtime = get_runtime()
    with runtime.lock:
        runtime.api_calls.clear()
        runtime.throttled_calls.clear()
        runtime.blocks_served = 0
        runtime.copies_peak.clear()
    runtime.ebs_meter.reset()


def fault(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    runtime = get_runtime()
    body = body or {}
    if body.get("clear"):
        runtime.clear_faults()
        return 200, {"cleared": True}
    if body.get("throttle") is not None:
        rate = float(body["throttle"])
        if rate <= 0:
            raise ControlError(400, "throttle: must be a positive number of calls per second")
        with runtime.lock:
            runtime.throttles.append(Throttle(rate=rate, api=body.get("api"), tokens=rate))
        return 200, {"throttle": rate, "api": body.get("api")}
    api, code = body.get("api"), body.get("error")
    if not api or not code:
        raise ControlError(400, "fault needs api and error (or throttle, or clear)")
    times = int(body.get("times", 1))
    if times < 1:
        raise ControlError(400, "times: must be >= 1")
    with runtime.lock:
        runtime.faults.append(Fault(api=api, code=code, times=times, status=body.get("status")))
    return 200, {"api": api, "error": code, "times": times}


def kill_instance(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    instance_id = (body or {}).get("instance_id") or (parts[0] if parts else "")
    for backend in all_ec2_backends():
        for instance in backend.all_instances():
            if instance.id == instance_id:
                killed = agents.stop(instance_id, kill=True)
                return 200, {"instance_id": instance_id, "agent_killed": killed}
    raise ControlError(404, f"instance '{instance_id}' does not exist in any account or Region")


def instances(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    if len(parts) != 2 or parts[1] != "devices":
        raise ControlError(404, "usage: /_lab/instances/<instance-id>/devices")
    instance_id = parts[0]
    for backend in all_ec2_backends():
        for instance in backend.all_instances():
            if instance.id == instance_id:
                devices = {}
                for device, mapping in instance.get_block_device_mapping:
                    data = backend.volume_data.get(mapping.volume_id)  # type: ignore[attr-defined]
                    by_id = devices_dir(instance_id) / "by-id" / by_id_name(mapping.volume_id)
                    devices[device] = {
                        "volume_id": mapping.volume_id,
                        "path": str(data.path) if data else None,
                        # what the instance sees: its NVMe device and the udev by-id link
                        "nvme": f"/dev/{os.readlink(by_id).rsplit('/', 1)[-1]}"
                        if by_id.is_symlink()
                        else None,
                        "by_id": str(by_id),
                    }
                return 200, {"instance_id": instance_id, "devices": devices}
    raise ControlError(404, f"instance '{instance_id}' does not exist in any account or Region")


def volumes(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    if not parts:
        raise ControlError(404, "usage: /_lab/volumes/<volume-id>")
    backend, volume = _find_volume(parts[0])
    data = backend.volume_data[parts[0]]
    return 200, {
        "volume_id": volume.id,
        "path": str(data.path),
        "size_gib": volume.size,
        "account": backend.account_id,
        "region": backend.region_name,
        "blocks_written": len(data.snapshot_map()),
    }


def config(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    runtime = get_runtime()
    if method == "POST":
        try:
            return 200, runtime.apply_config(body or {})
        except (TypeError, ValueError) as exc:
            raise ControlError(400, str(exc)) from exc
    return 200, runtime.config()


def reset_lab_files() -> None:
    agents.stop_all()
    runtime = get_runtime()
    for sub in ("volumes", "instances", "blocks"):
        shutil.rmtree(runtime.root / sub, ignore_errors=True)
    runtime.block_store.dir.mkdir(parents=True, exist_ok=True)
    reset_counters()
    runtime.clear_faults()
    lab_sts.reset()


def reset(method: str, parts: list[str], query: Any, body: Any) -> tuple[int, Any]:
    from moto.moto_api._internal.models import moto_api_backend

    reset_lab_files()
    moto_api_backend.reset()
    from ec2backup_lab import baseline

    baseline.provision_all()
    return 200, {"reset": True}


def shutdown() -> None:
    agents.stop_all()


def install(routes: dict[str, Any]) -> None:
    routes.update(
        {
            "health": lambda m, p, q, b: (200, {"ok": True}),
            "config": config,
            "seed": seed,
            "churn": churn,
            "encrypt-attack": encrypt_attack,
            "checksum": checksum,
            "metrics": metrics,
            "fault": fault,
            "kill-instance": kill_instance,
            "instances": instances,
            "volumes": volumes,
            "reset": reset,
        }
    )

"""The `Restore` workflow end to end: instances and volumes from snapshot sets, replicas and
image-level backups, in place and in another Region/account; cancel, errors, dry runs and the
restore-point listing.

Everything goes through `ec2backup restore ...` / `ec2backup restore-points list` subprocesses
against the module's orchestrator (the `wb` fixture of tests/workflows/conftest.py); results
are checked with boto3 against the lab and `lab checksum` (SHA-256 of a volume's or snapshot's
whole logical content, by id in any account/Region).
"""

from __future__ import annotations

import dataclasses
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from session_helpers import (
    ACCOUNT_B,
    EXIT_CRASH_CODES,
    EXIT_CRASHES,
    OTHER_REGION,
    REGION,
    ROLE_B,
    Session,
    Workbench,
    has_data,
    tail,
    wait_for,
)

RESTORE_TAG = "ec2backup:restore"
TEMP_TAG = "ec2backup:restore-temp"
SESSION_TAG = "ec2backup:session"  # a restore worker's resources name the restore so
REPLICA_REGION = "us-west-2"
DATA_DEVICES = ("/dev/sdf", "/dev/sdg")


# ---- helpers ---------------------------------------------------------------------------------
@dataclass
class Restored:
    """One `ec2backup restore ...` run: its id, exit code, result JSON (when it succeeded)."""

    restore_id: str
    returncode: int
    stdout: str
    stderr: str
    result: dict[str, Any] | None

    def error_lines(self) -> list[str]:
        """stderr without the interpreter-exit crash noise (see EXIT_CRASH_CODES)."""
        return [
            line
            for line in self.stderr.splitlines()
            if line.strip() and not line.startswith(("Fatal Python error", "Python runtime"))
        ]

    def device_volumes(self) -> dict[str, str]:
        assert self.result is not None
        return {v["device"]: v["volume_id"] for v in self.result["volumes"]}


def restore(wb: Workbench, *args: str, check: bool = True, timeout: float = 240) -> Restored:
    """`ec2backup restore ARGS` (add --wait or --dry-run yourself): the id on the first line
    of stdout, then the result JSON. With `check`, it must exit 0 with status completed or
    dry-run ok."""
    t0 = time.monotonic()
    proc = wb.cli("restore", *args, check=False, timeout=timeout)
    lines = proc.stdout.splitlines()
    result = json.loads("\n".join(lines[1:])) if len(lines) > 1 else None
    watched = "--wait" in args or "--dry-run" in args
    complete = result is not None or (lines and not watched)
    if complete and proc.returncode in EXIT_CRASH_CODES:  # the known crash at exit
        EXIT_CRASHES.append("restore")
        print(f"warning: ec2backup restore crashed at exit ({proc.returncode})")
        proc.returncode = 0
    out = Restored(
        restore_id=lines[0].strip() if lines else "",
        returncode=proc.returncode,
        stdout=proc.stdout,
        stderr=proc.stderr,
        result=result,
    )
    print(
        f"restore {' '.join(args)} -> {out.restore_id} rc={proc.returncode} "
        f"in {time.monotonic() - t0:.1f}s"
    )
    if check:
        assert out.returncode == 0 and out.result is not None, diagnose(wb, out)
        assert out.result["status"] in ("completed", "dry-run ok"), out.result
    return out


def diagnose(wb: Workbench, r: Restored) -> str:
    return (
        f"restore {r.restore_id} rc={r.returncode}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}\n"
        f"--- orchestrator log ---\n{tail(wb.orchestrator.log_path)}\n"
        f"--- aws.log ---\n{tail(Path(wb.lab.dir) / 'aws.log', 20)}"
    )


def checksums(wb: Workbench, ids: list[str]) -> list[str]:
    """`lab checksum` of each id, in parallel."""
    with ThreadPoolExecutor(max(1, len(ids))) as pool:
        return list(pool.map(wb.checksum, ids))


@dataclass
class Source:
    """What a session's snapshot of each device holds: its `lab checksum`, or None for a
    snapshot with no block (moto's never-written 8 GiB root: hashing it costs seconds, so an
    empty volume of the same size is checked instead), and its size."""

    sha256: dict[str, str | None]
    size_gib: dict[str, int]


_SOURCES: dict[str, Source] = {}


def source_content(wb: Workbench, session: Session) -> Source:
    if session.session_id not in _SOURCES:
        assert session.result is not None
        ebs = wb.client("ebs")
        devices = [v["device"] for v in session.result["volumes"]]
        snap_ids = session.result["snapshot_ids"]
        listed = [ebs.list_snapshot_blocks(SnapshotId=s) for s in snap_ids]
        full = [s for s, lb in zip(snap_ids, listed, strict=True) if lb["Blocks"]]
        sums = iter(checksums(wb, full))
        _SOURCES[session.session_id] = Source(
            sha256={
                d: (next(sums) if lb["Blocks"] else None)
                for d, lb in zip(devices, listed, strict=True)
            },
            size_gib={d: lb["VolumeSize"] for d, lb in zip(devices, listed, strict=True)},
        )
    return _SOURCES[session.session_id]


def assert_same_content(wb: Workbench, restored: dict[str, str], session: Session) -> None:
    """Each restored device's volume (by id, in any account/Region) holds the bytes of the
    session's snapshot of that device: equal `lab checksum`s, or both all zeros."""
    source = source_content(wb, session)
    hashed = sorted(d for d in restored if source.sha256[d] is not None)
    got = dict(zip(hashed, checksums(wb, [restored[d] for d in hashed]), strict=True))
    wrong = {d: restored[d] for d in hashed if got[d] != source.sha256[d]}
    for device in sorted(set(restored) - set(hashed)):
        info = wb.lab_call("GET", f"volumes/{restored[device]}")
        if (
            info["size_gib"] != source.size_gib[device]
            or info["blocks_written"] != 0
            or has_data(Path(info["path"]))
        ):
            wrong[device] = f"{restored[device]} is not all zeros: {info}"
    assert not wrong, f"restored volumes differ from their source snapshots: {wrong}"


def tags_of(resource: dict[str, Any]) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def instance(wb: Workbench, instance_id: str, region: str = REGION, role: str | None = None) -> Any:
    ec2 = wb.client("ec2", region, role)
    return ec2.describe_instances(InstanceIds=[instance_id])["Reservations"][0]["Instances"][0]


def made_by(
    wb: Workbench, restore_id: str, region: str = REGION, role: str | None = None
) -> dict[str, list[str]]:
    """What a restore made and still exists: live instances, volumes, (temporary) snapshots,
    images, and its worker (instance, volumes, password secret)."""
    ec2 = wb.client("ec2", region, role)
    by_tag = [{"Name": f"tag:{RESTORE_TAG}", "Values": [restore_id]}]
    as_session = [{"Name": f"tag:{SESSION_TAG}", "Values": [restore_id]}]
    instances = [
        f"{i['InstanceId']}:{i['State']['Name']}"
        for tags in (by_tag, as_session)
        for r in ec2.describe_instances(Filters=tags)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    volumes = sorted(
        v["VolumeId"]
        for tags in (by_tag, as_session)
        for v in ec2.describe_volumes(Filters=tags)["Volumes"]
    )
    secrets = [  # the worker's secret lives in the backup account (none in the target's)
        s["Name"]
        for account_role in dict.fromkeys([role, None])
        for s in wb.client("secretsmanager", region, account_role).list_secrets()["SecretList"]
        if {"Key": SESSION_TAG, "Value": restore_id} in s.get("Tags", [])
    ]
    snaps = ec2.describe_snapshots(OwnerIds=["self"], Filters=by_tag)["Snapshots"]
    temp = ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": f"tag:{TEMP_TAG}", "Values": [restore_id]}]
    )["Snapshots"]
    images = ec2.describe_images(Owners=["self"], Filters=by_tag)["Images"]
    out = {
        "instances": instances,
        "volumes": volumes,
        "snapshots": sorted({s["SnapshotId"] for s in [*snaps, *temp]}),
        "images": [i["ImageId"] for i in images],
        "secrets": secrets,
    }
    return {k: v for k, v in out.items() if v}


def worker_left(
    wb: Workbench, restore_id: str, region: str = REGION, role: str | None = None
) -> list[str]:
    """The restore worker's instances and volumes still there (none once a restore ended)."""
    ec2 = wb.client("ec2", region, role)
    worker = [
        {"Name": f"tag:{SESSION_TAG}", "Values": [restore_id]},
        {"Name": "tag:ec2backup:role", "Values": ["worker"]},
    ]
    live = [
        i["InstanceId"]
        for r in ec2.describe_instances(Filters=worker)["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] not in ("terminated", "shutting-down")
    ]
    return live + [v["VolumeId"] for v in ec2.describe_volumes(Filters=worker)["Volumes"]]


def inventory(wb: Workbench, region: str = REGION, role: str | None = None) -> dict[str, int]:
    """How many volumes, not-terminated instances, own snapshots and images a place holds."""
    ec2 = wb.client("ec2", region, role)
    instances = [
        i
        for r in ec2.describe_instances()["Reservations"]
        for i in r["Instances"]
        if i["State"]["Name"] != "terminated"
    ]
    return {
        "volumes": len(ec2.describe_volumes()["Volumes"]),
        "instances": len(instances),
        "snapshots": len(ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]),
        "images": len(ec2.describe_images(Owners=["self"])["Images"]),
    }


def assert_fails_cleanly(
    wb: Workbench, *args: str, expect: tuple[str, ...], timeout: float = 60
) -> Restored:
    """The restore fails at once with one clear stderr line naming the cause (`expect`:
    lowercase fragments, all required); it created nothing."""
    before = inventory(wb)
    t0 = time.monotonic()
    r = restore(wb, *args, "--wait", check=False, timeout=timeout)
    elapsed = time.monotonic() - t0
    print(f"  -> {elapsed:.1f}s: {r.stderr.strip()}")
    assert r.returncode != 0, diagnose(wb, r)
    assert r.restore_id.startswith("restore-"), r.stdout
    lines = r.error_lines()
    assert len(lines) == 1, f"want one error line, got:\n{r.stderr}"
    assert lines[0].startswith(f"restore {r.restore_id} failed: "), lines
    message = lines[0].lower()
    missing = [e for e in expect if e.lower() not in message]
    assert not missing, f"error line lacks {missing}: {lines[0]}"
    assert elapsed < 30, f"took {elapsed:.0f}s to fail (retried a permanent error?)"
    assert wb.status(r.restore_id) == "FAILED"
    assert made_by(wb, r.restore_id) == {}
    assert inventory(wb) == before
    return r


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two(wb: Workbench) -> dict[str, Any]:
    """A tagged 2-volume instance backed up twice into one repository: full, then incremental
    after churning /dev/sdf."""
    inst = wb.seed("--volumes", "2", "--size-gib", "1", "--fill", "0.03", "--tag", "app=x")
    repo = wb.new_repo()
    full = wb.backup(inst["instance_id"], "--repo", repo)
    wb.cli("lab", "churn", inst["volumes"][0]["volume_id"], "--fraction", "0.01")
    incremental = wb.backup(inst["instance_id"], "--repo", repo)
    assert full.result is not None and incremental.result is not None
    assert full.result["restore_point_id"] != incremental.result["restore_point_id"]
    return {"instance": inst, "repo": repo, "sessions": [full, incremental]}


@pytest.fixture(scope="module")
def replicated(wb: Workbench) -> dict[str, Any]:
    """A 1-volume instance backed up into a repository and replicated to us-west-2 in
    account 222222222222."""
    inst = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.02", "--seed", "7")
    repo = wb.new_repo()
    session = wb.backup(
        inst["instance_id"],
        "--repo",
        repo,
        "--replicate-to",
        REPLICA_REGION,
        "--replicate-account",
        ROLE_B,
    )
    assert session.result is not None
    assert len(session.result["replica_ids"]) == len(session.result["snapshot_ids"])
    return {"instance": inst, "repo": repo, "session": session}


# ---- instances and volumes in place ----------------------------------------------------------
@pytest.mark.parametrize("which", [0, 1], ids=["full", "incremental"])
@pytest.mark.parametrize("source", ["snapshot", "backup"])
def test_restore_instance(wb: Workbench, two: dict[str, Any], which: int, source: str) -> None:
    session: Session = two["sessions"][which]
    assert session.result is not None
    if source == "snapshot":
        r = restore(wb, "instance", session.result["snapshot_set_id"], "--wait")
    else:
        rp = session.result["restore_point_id"]
        r = restore(wb, "instance", rp, "--repo", two["repo"], "--wait")
    assert r.result is not None
    assert r.result["status"] == "completed"
    assert r.result["kind"] == "instance"
    assert r.result["source"] == source
    assert r.result["region"] == REGION
    assert r.result["checks"]
    if source == "backup":
        assert r.result["bytes_written"] > 0
    src = instance(wb, two["instance"]["instance_id"])
    new = instance(wb, r.result["instance_id"])
    assert new["State"]["Name"] == "running"
    # The original shape: device mapping, instance type, tags (plus the restore tag).
    src_devices = sorted(m["DeviceName"] for m in src["BlockDeviceMappings"])
    new_devices = sorted(m["DeviceName"] for m in new["BlockDeviceMappings"])
    assert new_devices == src_devices
    assert new["InstanceType"] == src["InstanceType"]
    src_tags = {k: v for k, v in tags_of(src).items() if not k.startswith("aws:")}
    assert src_tags.get("app") == "x"
    assert tags_of(new) == {**src_tags, RESTORE_TAG: r.restore_id}
    # The result names the attached volumes, each from its source volume.
    attached = {
        m["DeviceName"]: m["Ebs"]["VolumeId"] for m in new["BlockDeviceMappings"] if "Ebs" in m
    }
    assert r.device_volumes() == attached
    source_of = {v["device"]: v["source_volume_id"] for v in r.result["volumes"]}
    assert source_of == {v["device"]: v["volume_id"] for v in session.result["volumes"]}
    for vol in wb.client("ec2").describe_volumes(VolumeIds=list(attached.values()))["Volumes"]:
        assert tags_of(vol).get(RESTORE_TAG) == r.restore_id
    assert all(source_content(wb, session).sha256[d] for d in DATA_DEVICES)  # data, hashed
    if which == 1:  # the churned device differs between the sessions, the other does not
        first = source_content(wb, two["sessions"][0]).sha256
        assert source_content(wb, session).sha256["/dev/sdf"] != first["/dev/sdf"]
        assert source_content(wb, session).sha256["/dev/sdg"] == first["/dev/sdg"]
    assert_same_content(wb, attached, session)
    # Temporary snapshots (backup path) are gone; nothing else was left.
    assert not made_by(wb, r.restore_id).get("snapshots")
    assert not made_by(wb, r.restore_id).get("images")


@pytest.mark.parametrize("source", ["snapshot", "backup"])
def test_restore_volume_to_zone(wb: Workbench, two: dict[str, Any], source: str) -> None:
    session: Session = two["sessions"][1]
    assert session.result is not None
    rp_id = session.result["snapshot_set_id"]
    extra: tuple[str, ...] = ()
    if source == "backup":
        rp_id, extra = session.result["restore_point_id"], ("--repo", two["repo"])
    before = inventory(wb)
    r = restore(wb, "volume", rp_id, *extra, "--device", "/dev/sdf", "--az", "us-east-1b", "--wait")
    assert r.result is not None
    assert r.result["kind"] == "volume" and r.result["source"] == source
    assert r.result["instance_id"] is None
    assert len(r.result["volumes"]) == 1
    restored = r.result["volumes"][0]
    assert restored["device"] == "/dev/sdf"
    assert restored["source_volume_id"] == two["instance"]["volumes"][0]["volume_id"]
    vol = wb.client("ec2").describe_volumes(VolumeIds=[restored["volume_id"]])["Volumes"][0]
    assert vol["AvailabilityZone"] == "us-east-1b"
    assert vol["State"] == "available"
    assert tags_of(vol).get(RESTORE_TAG) == r.restore_id
    assert_same_content(wb, {"/dev/sdf": restored["volume_id"]}, session)
    after = inventory(wb)
    assert after["instances"] == before["instances"], "a volume restore launched an instance"
    assert after["volumes"] == before["volumes"] + 1
    assert made_by(wb, r.restore_id) == {"volumes": [restored["volume_id"]]}


@pytest.mark.parametrize("source", ["snapshot", "backup"])
def test_restore_volume_other_source_than_the_id(
    wb: Workbench, two: dict[str, Any], source: str
) -> None:
    """--source picks the other kind: a backup id restored from its snapshot set, a snapshot
    set id restored from its backup."""
    session: Session = two["sessions"][1]
    assert session.result is not None
    rp_id = session.result["restore_point_id" if source == "snapshot" else "snapshot_set_id"]
    r = restore(
        wb,
        "volume",
        rp_id,
        "--source",
        source,
        "--repo",
        two["repo"],
        "--volume-id",
        two["instance"]["volumes"][1]["volume_id"],
        "--wait",
    )
    assert r.result is not None
    assert r.result["source"] == source
    assert [v["device"] for v in r.result["volumes"]] == ["/dev/sdg"]
    vol = wb.client("ec2").describe_volumes(VolumeIds=[r.result["volumes"][0]["volume_id"]])
    if source == "snapshot":
        sdg = session.result["snapshot_ids"][
            [v["device"] for v in session.result["volumes"]].index("/dev/sdg")
        ]
        assert vol["Volumes"][0]["SnapshotId"] == sdg
        assert r.result["bytes_written"] == 0
    else:
        assert r.result["bytes_written"] > 0
    assert_same_content(wb, r.device_volumes(), session)
    assert made_by(wb, r.restore_id) == {"volumes": [r.result["volumes"][0]["volume_id"]]}


# ---- another Region and account --------------------------------------------------------------
CROSS = [
    pytest.param("instance"),
    pytest.param("volume"),
]


def cross_restore(
    wb: Workbench, kind: str, restore_point: str, region: str, *args: str
) -> Restored:
    """Restore `kind` (the instance, or its /dev/sdf) into `region` of account 222222222222."""
    which = ("--device", "/dev/sdf") if kind == "volume" else ()
    r = restore(
        wb,
        kind,
        restore_point,
        *args,
        *which,
        "--to-region",
        region,
        "--to-account",
        ROLE_B,
        "--wait",
    )
    assert r.result is not None
    assert r.result["status"] == "completed" and r.result["region"] == region
    ec2_b = wb.client("ec2", region, ROLE_B)
    volumes = ec2_b.describe_volumes(VolumeIds=list(r.device_volumes().values()))["Volumes"]
    assert sorted(v["VolumeId"] for v in volumes) == sorted(r.device_volumes().values())
    for vol in volumes:
        assert vol["AvailabilityZone"].startswith(region)
        assert tags_of(vol).get(RESTORE_TAG) == r.restore_id
    if kind == "instance":
        new = instance(wb, r.result["instance_id"], region, ROLE_B)
        assert new["State"]["Name"] == "running"
        assert new["Placement"]["AvailabilityZone"].startswith(region)
        assert tags_of(new).get(RESTORE_TAG) == r.restore_id
    else:
        assert r.result["instance_id"] is None
        assert list(r.device_volumes()) == ["/dev/sdf"]
    # Temporary snapshots in the target are gone; nothing landed in account A or elsewhere.
    left = made_by(wb, r.restore_id, region, ROLE_B)
    assert not left.get("snapshots") and not left.get("images"), left
    assert made_by(wb, r.restore_id) == {}
    assert made_by(wb, r.restore_id, REGION, ROLE_B) == {}
    return r


@pytest.mark.parametrize("kind", CROSS)
def test_restore_to_other_account_from_replicas(
    wb: Workbench, replicated: dict[str, Any], kind: str
) -> None:
    session: Session = replicated["session"]
    assert session.result is not None
    r = cross_restore(wb, kind, session.result["snapshot_set_id"], REPLICA_REGION)
    assert r.result is not None
    assert r.result["source"] == "snapshot"
    assert r.result["bytes_written"] == 0  # made from the replicas: no data written
    volumes = wb.client("ec2", REPLICA_REGION, ROLE_B).describe_volumes(
        VolumeIds=list(r.device_volumes().values())
    )["Volumes"]
    assert {v["SnapshotId"] for v in volumes} <= set(session.result["replica_ids"])
    assert_same_content(wb, r.device_volumes(), session)


@pytest.mark.parametrize("kind", CROSS)
def test_restore_to_other_account_from_backup(
    wb: Workbench, replicated: dict[str, Any], kind: str
) -> None:
    session: Session = replicated["session"]
    assert session.result is not None
    r = cross_restore(
        wb,
        kind,
        session.result["restore_point_id"],
        OTHER_REGION,
        "--repo",
        replicated["repo"],
    )
    assert r.result is not None
    assert r.result["source"] == "backup"
    assert r.result["bytes_written"] > 0
    assert_same_content(wb, r.device_volumes(), session)


# ---- exact on AWS: written zero blocks and holes -------------------------------------------------
# On AWS a block never put into an encrypted EBS-direct snapshot reads as random bytes (the lab
# models it); a restore is exact only if it tells a hole from a written zero block.
ZEROED_FRACTION = "0.008"  # 16 blocks: a zeroed 8 MiB region in the middle of the data


@pytest.fixture(
    scope="module",
    # Unencrypted volumes with written zero blocks (the seed writes some) and holes are the
    # `two` and `replicated` fixtures' (test_restore_instance, ..._to_other_account_from_backup);
    # the unencrypted variant here repeats them, so it is a long run for `make faults`.
    params=["cmk", pytest.param("none", marks=pytest.mark.fault)],
    ids=["encrypted", "unencrypted"],
)
def zeroed(wb: Workbench, request: pytest.FixtureRequest) -> dict[str, Any]:
    """A 2-volume instance (encrypted with a customer key, or not) whose volumes hold data,
    holes and a written zeroed region; a full backup, then an incremental after more churn
    (new data on /dev/sdf, another zeroed region on /dev/sdg)."""
    inst = wb.seed(
        "--volumes", "2", "--size-gib", "1", "--fill", "0.05", "--encryption", request.param
    )
    sdf, sdg = (v["volume_id"] for v in inst["volumes"])
    for volume_id in (sdf, sdg):
        zeroed = wb.cli_json("lab", "churn", volume_id, "--fraction", ZEROED_FRACTION, "--zeros")
        assert len(zeroed["blocks"]) == 16
    repo = wb.new_repo()
    full = wb.backup(inst["instance_id"], "--repo", repo)
    wb.cli("lab", "churn", sdf, "--fraction", "0.01")
    wb.cli_json("lab", "churn", sdg, "--fraction", "0.004", "--zeros", "--seed", "3")
    incremental = wb.backup(inst["instance_id"], "--repo", repo)
    for session in (full, incremental):
        assert session.result is not None
        snaps = wb.client("ec2").describe_snapshots(SnapshotIds=session.result["snapshot_ids"])
        data = [s for s in snaps["Snapshots"] if s["VolumeId"] in (sdf, sdg)]
        assert {s["Encrypted"] for s in data} == {request.param != "none"}
    return {
        "instance": inst,
        "repo": repo,
        "sessions": [full, incremental],
        "encrypted": request.param != "none",
    }


@pytest.mark.parametrize("which", [0, 1], ids=["full", "incremental"])
def test_backup_restores_are_exact_with_zeros_and_holes(
    wb: Workbench, zeroed: dict[str, Any], which: int
) -> None:
    """Every volume restored from the backup has its source snapshot's `lab checksum` (holes
    and the written zero regions included), encrypted or not; the data moved on a restore
    worker that is gone afterwards."""
    session: Session = zeroed["sessions"][which]
    assert session.result is not None
    rp = session.result["restore_point_id"]
    r = restore(wb, "instance", rp, "--repo", zeroed["repo"], "--wait")
    assert r.result is not None and r.result["source"] == "backup"
    assert_same_content(wb, r.device_volumes(), session)
    data = [r.device_volumes()[d] for d in DATA_DEVICES]
    volumes = wb.client("ec2").describe_volumes(VolumeIds=data)["Volumes"]
    assert {v["Encrypted"] for v in volumes} == {zeroed["encrypted"]}
    assert made_by(wb, r.restore_id).keys() <= {"instances", "volumes"}  # what it delivered
    assert worker_left(wb, r.restore_id) == []


def test_backup_restore_to_another_account_and_key_is_exact(
    wb: Workbench, zeroed: dict[str, Any]
) -> None:
    """The incremental, restored into account 222222222222 with that account's own KMS key:
    the same bytes, on volumes encrypted with that key."""
    session: Session = zeroed["sessions"][1]
    assert session.result is not None
    key = wb.client("kms", OTHER_REGION, ROLE_B).create_key(Description="restore target")
    key_arn = key["KeyMetadata"]["Arn"]
    r = cross_restore(
        wb,
        "instance",
        session.result["restore_point_id"],
        OTHER_REGION,
        "--repo",
        zeroed["repo"],
        "--kms-key",
        key_arn,
    )
    assert r.result is not None and r.result["source"] == "backup"
    assert_same_content(wb, r.device_volumes(), session)
    volumes = wb.client("ec2", OTHER_REGION, ROLE_B).describe_volumes(
        VolumeIds=list(r.device_volumes().values())
    )["Volumes"]
    assert {v.get("KmsKeyId") for v in volumes} == {key_arn}  # --kms-key: every volume
    assert made_by(wb, r.restore_id, OTHER_REGION, ROLE_B).keys() <= {"instances", "volumes"}
    assert worker_left(wb, r.restore_id, OTHER_REGION, ROLE_B) == []


# ---- instance shape: architecture, boot mode; image registration survives a crash --------------
@pytest.fixture(scope="module")
def graviton(wb: Workbench) -> dict[str, Any]:
    """An arm64 (Graviton, UEFI) instance with one data volume, backed up."""
    inst = wb.seed("--arch", "arm64", "--volumes", "1", "--size-gib", "1", "--fill", "0.02")
    repo = wb.new_repo()
    session = wb.backup(inst["instance_id"], "--repo", repo)
    return {"instance": inst, "repo": repo, "session": session}


@pytest.mark.parametrize("source", ["snapshot", "backup"])
def test_arm64_uefi_instance_restores_to_its_shape(
    wb: Workbench, graviton: dict[str, Any], source: str
) -> None:
    session: Session = graviton["session"]
    assert session.result is not None
    if source == "snapshot":
        r = restore(wb, "instance", session.result["snapshot_set_id"], "--wait")
    else:
        rp = session.result["restore_point_id"]
        r = restore(wb, "instance", rp, "--repo", graviton["repo"], "--wait")
    assert r.result is not None and r.result["source"] == source
    src = instance(wb, graviton["instance"]["instance_id"])
    new = instance(wb, r.result["instance_id"])
    shape = ("Architecture", "BootMode", "InstanceType")
    assert [new[k] for k in shape] == [src[k] for k in shape] == ["arm64", "uefi", "t4g.micro"]
    assert new["State"]["Name"] == "running"
    assert "images" not in made_by(wb, r.restore_id)
    assert_same_content(wb, r.device_volumes(), session)


def test_crash_between_image_registration_and_launch_leaves_nothing(
    wb: Workbench, graviton: dict[str, Any]
) -> None:
    """Kill the orchestrator while its image is registered and RunInstances is still being
    throttled: the restarted orchestrator finds the image again (no InvalidAMIName.Duplicate),
    launches, and the ended restore leaves no image and no temporary snapshot."""
    session: Session = graviton["session"]
    assert session.result is not None
    rp = session.result["restore_point_id"]
    r = restore(wb, "instance", rp, "--repo", graviton["repo"], check=False, timeout=60)
    rid = r.restore_id
    ec2 = wb.client("ec2")

    def images() -> list[str]:
        found = ec2.describe_images(
            Owners=["self"], Filters=[{"Name": f"tag:{RESTORE_TAG}", "Values": [rid]}]
        )["Images"]
        return [i["ImageId"] for i in found]

    def launched_its_worker() -> bool:
        # From the writing phase on, the next RunInstances is the restored instance's (waiting
        # for "snapshotting" could miss a restore that is done with it a second later).
        phase = wb.temporal(lambda c: c.get_workflow_handle(rid).query("phase", result_type=str))
        return phase.startswith("writing") or phase in ("snapshotting", "restoring")

    wait_for(launched_its_worker, 120, f"{rid} to have its restore worker", interval=0.3)
    wb.cli("lab", "fault", "--throttle", "0.2", "--api", "RunInstances")
    try:
        registered = wait_for(images, 60, f"{rid} to register its image", interval=0.2)
        wb.orchestrator.restart(kill=True)
    finally:
        wb.cli("lab", "fault", "--clear")
    print(f"killed the orchestrator with {registered} registered")
    status = wb.wait_status(rid, timeout=180)
    assert status == "COMPLETED", wb.diagnose(rid)
    assert images() == []
    left = made_by(wb, rid)
    assert left.keys() <= {"instances", "volumes"}, left  # what it delivered, nothing else
    assert len(left["instances"]) == 1, left
    assert worker_left(wb, rid) == []


# ---- cancel ------------------------------------------------------------------------------------
def api_calls(wb: Workbench, api: str) -> int:
    return int(wb.metrics()["api_calls"].get(api, 0))


def temp_snapshots(wb: Workbench, restore_id: str) -> list[dict[str, Any]]:
    return list(
        wb.client("ec2").describe_snapshots(
            OwnerIds=["self"], Filters=[{"Name": f"tag:{TEMP_TAG}", "Values": [restore_id]}]
        )["Snapshots"]
    )


def start_backup_restore(wb: Workbench, two: dict[str, Any]) -> str:
    """Start (no --wait) an instance restore from the full session's backup: its id."""
    session: Session = two["sessions"][0]
    assert session.result is not None
    rp = session.result["restore_point_id"]
    r = restore(wb, "instance", rp, "--repo", two["repo"], check=False, timeout=60)
    assert r.returncode == 0 and r.restore_id.startswith("restore-"), diagnose(wb, r)
    return r.restore_id


def cancel(wb: Workbench, restore_id: str) -> str:
    """`handle.cancel()`, then the status the workflow closes with."""

    async def go(client: Any) -> None:
        await client.get_workflow_handle(restore_id).cancel()

    t0 = time.monotonic()
    wb.temporal(go)
    status = wb.wait_status(restore_id, timeout=90)
    print(f"cancel {restore_id} -> {status} in {time.monotonic() - t0:.1f}s")
    return status


def test_cancel_mid_restore_leaves_nothing(wb: Workbench, two: dict[str, Any]) -> None:
    """Cancel while the restore worker writes blocks (its pack reads slowed to 3/s): the
    worker, its volumes, its secret and every snapshot are gone once the restore ends."""
    wb.cli("lab", "fault", "--throttle", "3", "--api", "GetObject")
    try:
        rid = start_backup_restore(wb, two)

        def writing() -> str | None:
            phase = wb.temporal(
                lambda c: c.get_workflow_handle(rid).query("phase", result_type=str)
            )
            return phase if phase.startswith("writing") else None

        wait_for(writing, 90, f"{rid} to write on its worker", interval=0.3)
        gets = api_calls(wb, "GetObject")
        wait_for(lambda: api_calls(wb, "GetObject") > gets + 3, 30, "packs to be read")
        assert wb.status(rid) == "RUNNING"
        assert made_by(wb, rid).get("volumes"), "the worker's volumes exist while it writes"
        status = cancel(wb, rid)
    finally:
        wb.cli("lab", "fault", "--clear")
    assert status == "CANCELED", wb.diagnose(rid)
    assert made_by(wb, rid) == {}, wb.diagnose(rid)


def stable(read: Any, seconds: float) -> bool:
    first = read()
    time.sleep(seconds)
    return bool(read() == first)


# A long fault run for `make faults`; its short form in `make test`:
# test_cancel_mid_restore_leaves_nothing.
@pytest.mark.fault
def test_cancel_while_the_worker_is_provisioned_leaves_nothing(
    wb: Workbench, two: dict[str, Any]
) -> None:
    """Cancel while the restore worker's volumes are being created (CreateVolume throttled):
    once the calls get through, nothing is left behind the finished cleanup."""
    creates = api_calls(wb, "CreateVolume")
    wb.cli("lab", "fault", "--throttle", "0.5", "--api", "CreateVolume")  # < 1/s: none pass
    try:
        rid = start_backup_restore(wb, two)
        wait_for(
            lambda: api_calls(wb, "CreateVolume") >= creates + 2,
            60,
            "CreateVolume to be tried",
        )
        status = cancel(wb, rid)
    finally:
        wb.cli("lab", "fault", "--clear")
    assert status == "CANCELED", wb.diagnose(rid)
    # boto3 backs off up to 20 s between tries: give the throttled calls time to go through.
    deadline = time.monotonic() + 25
    while time.monotonic() < deadline and not made_by(wb, rid):
        time.sleep(1)
    time.sleep(3)
    left = made_by(wb, rid)
    assert left == {}, f"left after the cancel: {left}; {temp_snapshots(wb, rid)}"


# ---- errors ------------------------------------------------------------------------------------
def test_unknown_snapshot_set(wb: Workbench) -> None:
    assert_fails_cleanly(
        wb, "instance", "set-0000000000000000", expect=("set-0000000000000000", "not found")
    )


def test_unknown_backup_id(wb: Workbench, two: dict[str, Any]) -> None:
    assert_fails_cleanly(
        wb,
        "instance",
        "0123456789abcdef0123",
        "--repo",
        two["repo"],
        expect=("0123456789abcdef0123", "not found"),
    )


def test_unknown_subnet(wb: Workbench, two: dict[str, Any]) -> None:
    session: Session = two["sessions"][0]
    assert session.result is not None
    assert_fails_cleanly(
        wb,
        "instance",
        session.result["snapshot_set_id"],
        "--subnet",
        "subnet-00000000",
        expect=("subnet-00000000", "does not exist"),
    )


def test_repository_with_another_password(wb: Workbench, two: dict[str, Any]) -> None:
    """A repository the orchestrator's password does not open: the restore says so."""
    other = dataclasses.replace(wb, env={**wb.env, "EC2BACKUP_REPO_PASSWORD": "other"})
    repo = two["repo"] + "-other"
    other.cli("repo", "init", "--repo", repo)
    assert_fails_cleanly(
        wb, "instance", "0123456789abcdef0123", "--repo", repo, expect=("password",)
    )


def test_restore_points_list_with_wrong_password(wb: Workbench, two: dict[str, Any]) -> None:
    wrong = dataclasses.replace(wb, env={**wb.env, "EC2BACKUP_REPO_PASSWORD": "wrong"})
    proc = wrong.cli(
        "restore-points", "list", "--repo", two["repo"], "--json", check=False, timeout=60
    )
    print(f"rc={proc.returncode}: {proc.stderr.strip()}")
    assert proc.returncode != 0
    assert proc.stdout.strip() == ""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "password" in lines[0].lower() or "key" in lines[0].lower(), lines[0]


# ---- dry run -----------------------------------------------------------------------------------
@pytest.mark.parametrize("source", ["snapshot", "backup"])
def test_dry_run_changes_nothing(wb: Workbench, two: dict[str, Any], source: str) -> None:
    session: Session = two["sessions"][1]
    assert session.result is not None
    if source == "snapshot":
        args: tuple[str, ...] = ("instance", session.result["snapshot_set_id"])
    else:
        args = ("instance", session.result["restore_point_id"], "--repo", two["repo"])
    before = inventory(wb)
    r = restore(wb, *args, "--dry-run")
    assert r.result is not None
    assert r.result["status"] == "dry-run ok"
    assert r.result["source"] == source
    assert r.result["checks"], r.result
    assert r.result["instance_id"] is None and r.result["volumes"] == []
    assert r.result["bytes_written"] == 0
    assert wb.status(r.restore_id) == "COMPLETED"
    assert inventory(wb) == before
    assert made_by(wb, r.restore_id) == {}


def test_dry_run_to_other_region_copies_nothing(wb: Workbench, two: dict[str, Any]) -> None:
    """A dry run to a Region without replicas plans the copy but makes none."""
    session: Session = two["sessions"][0]
    assert session.result is not None
    before = inventory(wb, OTHER_REGION, ROLE_B), inventory(wb)
    r = restore(
        wb,
        "instance",
        session.result["snapshot_set_id"],
        "--to-region",
        OTHER_REGION,
        "--to-account",
        ROLE_B,
        "--dry-run",
    )
    assert r.result is not None and r.result["status"] == "dry-run ok"
    assert r.result["checks"]
    assert (inventory(wb, OTHER_REGION, ROLE_B), inventory(wb)) == before


# ---- restore points ----------------------------------------------------------------------------
def test_restore_points_list(wb: Workbench, replicated: dict[str, Any]) -> None:
    session: Session = replicated["session"]
    assert session.result is not None
    inst_id = replicated["instance"]["instance_id"]
    set_id = session.result["snapshot_set_id"]
    rp_id = session.result["restore_point_id"]
    devices = sorted(v["device"] for v in session.result["volumes"])
    common = ("--instance", inst_id, "--repo", replicated["repo"], "--json")
    here = wb.cli_json("restore-points", "list", *common)["restore_points"]
    there = wb.cli_json(
        "restore-points",
        "list",
        *common,
        "--region",
        REPLICA_REGION,
        "--account-role-arn",
        ROLE_B,
    )["restore_points"]
    print(json.dumps({"here": here, "there": there}, indent=1))
    assert all(p["instance_id"] == inst_id for p in [*here, *there])
    by_kind_here = {p["kind"]: p for p in here}
    assert sorted(p["kind"] for p in here) == ["backup", "snapshot"], here
    snap = by_kind_here["snapshot"]
    assert snap["id"] == set_id
    assert snap["where"] == f"{REGION}/123456789012"
    assert snap["complete"] is True
    assert sorted(snap["volumes"]) == devices
    backup = by_kind_here["backup"]
    assert rp_id.startswith(backup["id"]) or backup["id"].startswith(rp_id)
    assert backup["snapshot_set"] == set_id
    assert backup["where"] == replicated["repo"]
    assert sorted(backup["volumes"]) == devices
    assert sorted(p["kind"] for p in there) == ["backup", "replica"], there
    replica = next(p for p in there if p["kind"] == "replica")
    assert replica["id"] == set_id
    assert replica["where"] == f"{REPLICA_REGION}/{ACCOUNT_B}"
    assert replica["complete"] is True
    assert sorted(replica["volumes"]) == devices

"""`make demo`: the main job on the embedded lab, checked byte for byte.

lab up -> repository in the lab's S3 -> orchestrator worker -> seed an instance ->
full backup session -> churn 1% -> incremental session (changed blocks only) ->
restore every volume from the repository and compare with the snapshot -> archive the restore
point to S3 Glacier -> restore a volume from the archive (retrieval, then EBS) and compare ->
report.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import boto3
from rich.console import Console
from rich.table import Table

from ec2backup_lab import manager

console = Console()
DEMO_BUCKET = "ec2backup-demo"
DEMO_REPO = f"s3://{DEMO_BUCKET}/repo"
DEMO_ARCHIVE = f"s3://{DEMO_BUCKET}/archive"
DEMO_VOLUMES, DEMO_VOLUME_GIB, DEMO_FILL = 2, 2, 0.25
GIB = 1024**3


def _lab_call(state: manager.LabState, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"{state.aws_url}/_lab/{path}", data=data, method=method)
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.load(r)


def _password(state: manager.LabState) -> str:
    """The demo repository's password, kept in a 0600 file in the lab directory."""
    path = Path(state.dir) / "demo-repo-password"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


def _ensure_repository(password: str) -> None:
    from ec2backup.errors import NotFoundError
    from ec2backup.repository.repo import Repository

    s3 = boto3.client("s3")
    try:
        s3.head_bucket(Bucket=DEMO_BUCKET)
    except Exception:
        s3.create_bucket(Bucket=DEMO_BUCKET)
        s3.put_bucket_versioning(Bucket=DEMO_BUCKET, VersioningConfiguration={"Status": "Enabled"})
    try:
        Repository.open(DEMO_REPO, password.encode())
    except NotFoundError:
        Repository.create(DEMO_REPO, password.encode())
        console.print(f"created repository {DEMO_REPO}")


def _cli_json(label: str, *args: str) -> tuple[dict[str, Any], float]:
    """Run one `ec2backup ... --wait` command (live progress on stderr); (result, seconds)."""
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "ec2backup.cli", *args, "--wait"],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    if out.returncode != 0:
        raise SystemExit(f"{label} failed:\n{out.stdout}")
    text = out.stdout
    return json.loads(text[text.index("{") :]), time.monotonic() - t0


def _session(instance_id: str, label: str) -> tuple[dict[str, Any], float]:
    return _cli_json(f"{label} session", "backup", instance_id, "--repo", DEMO_REPO)


def _metrics(state: manager.LabState) -> dict[str, Any]:
    return dict(_lab_call(state, "GET", "metrics"))


def _restore_check(
    result: dict[str, Any], password: str, state: manager.LabState
) -> list[tuple[str, bool, float]]:
    from ec2backup.repository.image import restore_image
    from ec2backup.repository.repo import Repository

    repo = Repository.open(DEMO_REPO, password.encode())
    _, rp = repo.load_restore_point(result["restore_point_id"])
    checks = []
    for snapshot_id, record in zip(result["snapshot_ids"], rp.volumes, strict=True):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "volume.img"
            t0 = time.monotonic()
            restore_image(repo, record, out)
            seconds = time.monotonic() - t0
            digest = hashlib.sha256()
            with open(out, "rb") as f:
                while chunk := f.read(8 << 20):
                    digest.update(chunk)
        expected = _lab_call(state, "GET", f"checksum/{snapshot_id}")["sha256"]
        checks.append((f"{record.name} {record.device}", digest.hexdigest() == expected, seconds))
    return checks


def _running_workers() -> int:
    """Worker instances (tag ec2backup:role=worker) not terminated: every session removes its."""
    reservations = boto3.client("ec2").describe_instances(
        Filters=[
            {"Name": "tag:ec2backup:role", "Values": ["worker"]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopping"]},
        ]
    )["Reservations"]
    return sum(len(r["Instances"]) for r in reservations)


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def main() -> None:
    started = time.monotonic()
    console.rule("[bold]ec2backup demo")
    state, fresh = manager.up(
        None, manager.DEFAULT_AWS_PORT, manager.DEFAULT_TEMPORAL_PORT, manager.DEFAULT_UI_PORT
    )
    console.print(
        f"lab {'started' if fresh else 'already running'} in {state.dir}: "
        f"AWS {state.aws_url}, Temporal {state.temporal_address}"
    )
    os.environ.update(state.env())
    password = _password(state)
    os.environ["EC2BACKUP_REPO_PASSWORD"] = password
    _ensure_repository(password)
    log = open(Path(state.dir) / "worker.log", "ab")  # noqa: SIM115 - closed in finally
    worker = subprocess.Popen(
        [sys.executable, "-m", "ec2backup.cli", "worker"],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )
    try:
        with console.status(
            f"seeding an instance with {DEMO_VOLUMES} x {DEMO_VOLUME_GIB} GiB data volumes"
        ):
            seeded = _lab_call(
                state,
                "POST",
                "seed",
                {
                    "instances": 1,
                    "volumes": DEMO_VOLUMES,
                    "size_gib": DEMO_VOLUME_GIB,
                    "fill": DEMO_FILL,
                    "tags": {"app": "demo"},
                },
            )
        instance = seeded["instances"][0]
        console.print(
            f"instance {instance['instance_id']}: "
            + ", ".join(f"{v['volume_id']} at {v['device']}" for v in instance["volumes"])
        )

        console.rule("full backup session")
        m0 = _metrics(state)
        full, full_s = _session(instance["instance_id"], "full")
        m1 = _metrics(state)
        churned = 0
        for v in instance["volumes"]:
            churned += _lab_call(
                state, "POST", "churn", {"volume_id": v["volume_id"], "fraction": 0.01, "seed": 7}
            )["bytes"]
        console.rule("incremental session (changed block tracking)")
        incr, incr_s = _session(instance["instance_id"], "incremental")
        m2 = _metrics(state)
        console.rule("restore check")
        checks = _restore_check(incr, password, state)
        console.rule("archive to S3 Glacier, and restore a volume from the archive")
        archived, archive_s = _cli_json(
            "archive", "archive", incr["restore_point_id"], "--repo", DEMO_REPO,
            "--to", DEMO_ARCHIVE,
        )  # fmt: skip
        data_ids = {v["volume_id"] for v in instance["volumes"]}
        index = next(i for i, v in enumerate(incr["volumes"]) if v["volume_id"] in data_ids)
        first = incr["volumes"][index]
        from_archive, from_archive_s = _cli_json(
            "restore from the archive", "restore", "volume", incr["restore_point_id"],
            "--source", "archive", "--repo", DEMO_ARCHIVE, "--volume-id", first["volume_id"],
            "--retrieval-poll-seconds", "1",
        )  # fmt: skip
        snapshot = incr["snapshot_ids"][index]
        expected = _lab_call(state, "GET", f"checksum/{snapshot}")["sha256"]
        new_volume = from_archive["volumes"][0]["volume_id"]
        got = _lab_call(state, "GET", f"checksum/{new_volume}")["sha256"]
        checks.append(
            (
                f"{first['volume_id']} from the archive to {new_volume}",
                got == expected,
                from_archive_s,
            )
        )
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        log.close()

    table = Table(title="what the demo did")
    table.add_column("step")
    table.add_column("result")
    data_bytes = int(DEMO_VOLUMES * DEMO_VOLUME_GIB * GIB * DEMO_FILL)
    for name, result, seconds, before, after in (
        ("full session", full, full_s, m0, m1),
        ("incremental session", incr, incr_s, m1, m2),
    ):
        read = after["agent_bytes_read_total"] - before["agent_bytes_read_total"]
        stored = sum(v["bytes_stored"] for v in result["volumes"])
        table.add_row(
            name,
            f"{seconds:.1f}s; read {_mib(read)} from volumes, stored "
            f"{_mib(stored)}; worker placement {result['placement']}; "
            f"restore point {result['restore_point_id'][:12]}",
        )
    table.add_row(
        "data on the instance",
        f"{_mib(data_bytes)} written of "
        f"{DEMO_VOLUMES * DEMO_VOLUME_GIB} GiB; churned {_mib(churned)}",
    )
    verify = archived.get("verify") or {}
    table.add_row(
        "archive",
        f"{archive_s:.1f}s; {archived['status']} in {archived['storage_class']}: "
        f"{verify.get('packs', 0)} packs, {verify.get('objects_per_gib', 0)} objects/GiB; "
        f"retrieval before the restore took {from_archive.get('retrieval_seconds') or 0:.1f}s",
    )
    table.add_row("CBT", "; ".join(f"{v['device']}: {v['cbt_reason']}" for v in incr["volumes"]))
    for label, ok, seconds in checks:
        table.add_row(f"restore {label}", f"{'byte-exact' if ok else 'MISMATCH'} ({seconds:.1f}s)")
    table.add_row("workers left running", str(_running_workers()))
    console.print(table)
    console.print(
        f"Temporal Web UI: {state.ui_url}  (sessions are the BackupSession "
        f'workflows). Environment: eval "$(ec2backup lab env --dir {state.dir})"; '
        "stop the lab with `ec2backup lab down`."
    )
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")
    if not all(ok for _, ok, _ in checks):
        raise SystemExit("demo check failed: a restore did not match its snapshot")


if __name__ == "__main__":
    main()

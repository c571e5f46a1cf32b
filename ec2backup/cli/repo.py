"""`ec2backup repo ...` and `ec2backup image ...`: thin typer commands over the library.

Passwords never come from argv: EC2BACKUP_REPO_PASSWORD or --password-file (new passwords for
`repo key add`: EC2BACKUP_NEW_REPO_PASSWORD or --new-password-file). Restore point ids go to
stdout alone; summaries and progress go to stderr.
"""

from __future__ import annotations

import datetime as dt
import enum
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from ec2backup.cli.output import json_output
from ec2backup.errors import UserError
from ec2backup.progress import human_bytes, progress_bar, stderr_console
from ec2backup.repository.marks import DEFAULT_GRACE
from ec2backup.repository.repo import (
    DEFAULT_COMPRESSION_LEVEL,
    DEFAULT_LOCK_TTL_SECONDS,
    DEFAULT_PACK_SIZE,
    MIN_LOCK_TTL_SECONDS,
    SHORT_ID,
    ObjectLockSettings,
    Repository,
    read_password,
)

repo_app = typer.Typer(
    help="Manage a backup repository (directory or s3://bucket/prefix).", no_args_is_help=True
)
image_app = typer.Typer(
    help="Back up and restore raw disk images and block devices.", no_args_is_help=True
)
key_app = typer.Typer(help="Manage the key files that unlock the repository.", no_args_is_help=True)
repo_app.add_typer(key_app, name="key")

RepoOpt = Annotated[
    str,
    typer.Option("--repo", "-r", envvar="EC2BACKUP_REPO", help="Directory or s3://bucket/prefix."),
]
PasswordFileOpt = Annotated[
    str | None,
    typer.Option(
        "--password-file", help="File holding the password (else $EC2BACKUP_REPO_PASSWORD)."
    ),
]
LockWaitOpt = Annotated[
    float, typer.Option("--lock-wait", help="Seconds to wait for a conflicting lock.")
]


def _open(repo: str, password_file: str | None) -> Repository:
    return Repository.open(repo, read_password(password_file))


def _say(msg: str) -> None:
    if not sys.stderr.isatty():  # a script or a log: plain lines, without importing rich
        print(msg, file=sys.stderr, flush=True)
        return
    stderr_console().print(msg, highlight=False, soft_wrap=True, markup=False)


# ---- repo ----------------------------------------------------------------------------------


class ObjectLockMode(enum.StrEnum):
    governance = "governance"
    compliance = "compliance"


@repo_app.command("init")
def repo_init(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    kms_key_id: Annotated[
        str | None, typer.Option("--kms-key-id", help="Also wrap the master key with this KMS key.")
    ] = None,
    pack_size_mib: Annotated[
        int | None,
        typer.Option("--pack-size-mib", help="Target pack size (default 16 MiB; archives 128)."),
    ] = None,
    storage_class: Annotated[
        str | None,
        typer.Option(
            "--storage-class",
            help="An archive repository: packs in GLACIER or DEEP_ARCHIVE (128 MiB packs).",
        ),
    ] = None,
    lock_ttl_seconds: Annotated[
        int,
        typer.Option(
            "--lock-ttl-seconds",
            min=MIN_LOCK_TTL_SECONDS,
            help="Locks not refreshed for this long are stale (holders refresh 5 times per "
            "TTL); a killed process blocks prune this long.",
        ),
    ] = DEFAULT_LOCK_TTL_SECONDS,
    object_lock: Annotated[
        ObjectLockMode | None,
        typer.Option(
            "--object-lock",
            help="Lock everything a restore point needs (S3 Object Lock; the bucket must have "
            "it enabled): governance or compliance",
        ),
    ] = None,
    lock_days: Annotated[
        int,
        typer.Option(
            "--lock-days",
            min=1,
            help="--object-lock: how long a restore point is kept when its session does not "
            "say (a policy's sessions say: its retention)",
        ),
    ] = 30,
    lock_margin_days: Annotated[
        int,
        typer.Option("--lock-margin-days", min=0, help="--object-lock: days added to each lock"),
    ] = 7,
    compression_level: Annotated[
        int,
        typer.Option(
            "--compression-level",
            min=1,
            max=19,
            help="zstd level of the blocks written (default 3; 1 compresses text about 1.5x "
            "faster for a few percent more storage on typical data)",
        ),
    ] = DEFAULT_COMPRESSION_LEVEL,
) -> None:
    """Create a repository: config, and one key file per wrapping (password and/or KMS)."""
    from ec2backup.archive.copy import ARCHIVE_PACK_SIZE, STORAGE_CLASSES

    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise UserError(f"--storage-class must be one of {', '.join(STORAGE_CLASSES)}")
    if pack_size_mib is None:
        pack_size_mib = (ARCHIVE_PACK_SIZE if storage_class else DEFAULT_PACK_SIZE) >> 20
    if not 1 <= pack_size_mib <= 1024:
        raise UserError("--pack-size-mib must be between 1 and 1024")
    r = Repository.create(
        repo,
        read_password(password_file),
        kms_key_id,
        pack_size=pack_size_mib * 1024 * 1024,
        compression_level=compression_level,
        data_storage_class=storage_class,
        lock_ttl_seconds=lock_ttl_seconds,
        object_lock=(
            ObjectLockSettings(
                mode=object_lock.value.upper(),  # type: ignore[arg-type]
                days=lock_days,
                margin_days=lock_margin_days,
            )
            if object_lock is not None
            else None
        ),
    )
    _say(f"created repository {r.config.id[:SHORT_ID]} at {r.backend.location()}")
    if r.created_note:
        _say(r.created_note)
    print(r.config.id)
    if repo.startswith("s3://"):  # what sessions can use: the catalog should know it
        from ec2backup import installation

        problem = installation.remember_all([repo], [])
        if problem:
            _say(f"note: not yet remembered for the catalog ({problem})")


@repo_app.command("ls")
def repo_ls(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """List restore points with their volumes."""
    r = _open(repo, password_file)
    rps = r.list_restore_points()
    if json_output(as_json):
        out = [
            {
                "id": oid,
                "time": rp.time.isoformat(),
                "parent": rp.parent,
                "hostname": rp.hostname,
                "source": rp.source.model_dump(),
                "tags": rp.tags,
                "volumes": [
                    {
                        "index": v.index,
                        "name": v.name,
                        "device": v.device,
                        "size": v.size,
                        "stats": v.stats.model_dump(),
                    }
                    for v in rp.volumes
                ],
            }
            for oid, rp in rps
        ]
        print(json.dumps(out, indent=2))
        return
    from rich.table import Table

    table = Table("id", "time", "parent", "volumes", "size", "allocated")
    for oid, rp in rps:
        table.add_row(
            oid[:SHORT_ID],
            f"{rp.time:%Y-%m-%d %H:%M:%S}",
            (rp.parent or "")[:SHORT_ID],
            "\n".join(f"{v.index}: {v.name}" for v in rp.volumes),
            "\n".join(human_bytes(v.size) for v in rp.volumes),
            "\n".join(human_bytes(v.stats.blocks_allocated * v.block_size) for v in rp.volumes),
        )
    from rich.console import Console

    Console().print(table)
    _say(f"{len(rps)} restore points")


@repo_app.command("stats")
def repo_stats(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Logical size, stored size and the dedup+compression ratio."""
    from ec2backup.repository.prune import stats

    r = _open(repo, password_file)
    with r.lock(exclusive=False, purpose="stats", wait=60):
        s = stats(r)
    data = {
        "restore_points": s.restore_points,
        "volumes": s.volumes,
        "logical_bytes": s.logical_bytes,
        "allocated_bytes": s.allocated_bytes,
        "unique_blobs": s.unique_blobs,
        "unique_raw_bytes": s.unique_raw_bytes,
        "stored_bytes": s.stored_bytes,
        "dedup_ratio": round(s.dedup_ratio, 3),
    }
    if json_output(as_json):
        print(json.dumps(data, indent=2))
        return
    print(f"restore points:       {s.restore_points} ({s.volumes} volumes)")
    print(f"logical size:         {human_bytes(s.logical_bytes)}")
    print(f"allocated (non-zero): {human_bytes(s.allocated_bytes)}")
    print(f"unique blocks:        {s.unique_blobs} ({human_bytes(s.unique_raw_bytes)})")
    print(f"stored:               {human_bytes(s.stored_bytes)}")
    print(f"dedup+compression:    {s.dedup_ratio:.2f}x")


@repo_app.command("forget")
def repo_forget(
    ids: Annotated[list[str], typer.Argument(help="Restore point ids (unique prefixes).")],
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    lock_wait: LockWaitOpt = 60.0,
) -> None:
    """Remove restore points (their data stays until `repo prune`)."""
    r = _open(repo, password_file)
    with r.lock(exclusive=False, purpose="forget", wait=lock_wait):
        for i in ids:
            oid = r.forget(i)
            _say(f"removed restore point {oid[:SHORT_ID]}")


@repo_app.command("prune")
def repo_prune(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run")] = False,
    lock_wait: LockWaitOpt = 0.0,
    grace_hours: Annotated[
        float,
        typer.Option(
            "--grace-hours",
            min=0,
            help="Delete what an earlier prune marked only once this many hours have passed "
            "since the marking (0: whatever any earlier prune marked).",
        ),
    ] = DEFAULT_GRACE.total_seconds() / 3600,
) -> None:
    """Mark data no restore point references, and delete what earlier prunes marked once
    their grace period is over (needs the exclusive lock)."""
    from ec2backup.repository.prune import prune

    r = _open(repo, password_file)
    t0 = time.monotonic()
    grace = dt.timedelta(hours=grace_hours)
    with r.lock(exclusive=True, purpose="prune", wait=lock_wait), progress_bar("prune") as bar:
        rep = prune(r, dry_run=dry_run, progress=bar.advance, grace=grace)
    verb = "would" if dry_run else ""
    for pending in rep.marks_pending:
        _say(f"waiting: {pending}")
    _say(
        f"prune: {verb + ' ' if verb else ''}freed {human_bytes(rep.bytes_freed)} "
        f"({rep.packs_deleted} packs, {rep.pages_deleted} map pages marked earlier); "
        f"{verb + ' ' if verb else ''}marked {human_bytes(rep.bytes_marked)} for deletion "
        f"after {grace_hours:g}h ({rep.packs_marked} packs, {rep.pages_marked} map pages; "
        f"{rep.blobs_removed} blobs); kept {rep.blobs_kept} blobs, packs written "
        f"{rep.packs_written}; recovered {rep.packs_recovered} packs, {rep.pages_recovered} "
        f"map pages ({time.monotonic() - t0:.1f}s)"
    )
    if rep.locked:
        last = max(rep.locked.values())
        _say(
            f"prune: {len(rep.locked)} deleted objects stay stored under Object Lock until "
            f"{last} at the latest (the bucket's lifecycle rule reclaims them then):"
        )
        for name, until in rep.locked.items():
            _say(f"  locked until {until}: {name}")


@repo_app.command("check")
def repo_check(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    read_data: Annotated[
        bool, typer.Option("--read-data", help="Read and verify every pack.")
    ] = False,
    read_data_subset: Annotated[
        str | None,
        typer.Option(
            "--read-data-subset", help="Read and verify a random PERCENT of packs (e.g. 10%)."
        ),
    ] = None,
) -> None:
    """Verify the repository structure (and data); exit non-zero naming broken objects."""
    from ec2backup.repository.check import check

    subset: float | None = None
    if read_data_subset is not None:
        try:
            subset = float(read_data_subset.strip().rstrip("%"))
        except ValueError as exc:
            raise UserError(f"--read-data-subset: not a percentage: {read_data_subset!r}") from exc
    r = _open(repo, password_file)
    t0 = time.monotonic()
    with r.lock(exclusive=False, purpose="check", wait=60), progress_bar("read data") as bar:
        rep = check(
            r,
            read_data=read_data,
            subset_percent=subset,
            progress=bar.advance,
            on_start=bar.set_total,
        )
    for w in rep.warnings:
        _say(f"warning: {w}")
    for e in rep.errors:
        print(f"error: {e}", file=sys.stderr)
    _say(
        f"check: {rep.restore_points} restore points, {rep.index_files} index files, "
        f"{rep.packs} packs ({rep.packs_read} read), {rep.pages} map pages, "
        f"{rep.blobs_referenced} referenced blobs ({rep.blobs_verified} verified) "
        f"in {time.monotonic() - t0:.1f}s"
    )
    if r.config.object_lock is not None:
        from ec2backup.repository import objectlock

        cov = objectlock.coverage(r)
        _say(
            f"lock coverage: {cov.percent:.0f}% ({cov.covered} of {cov.needed} objects needed "
            f"by protected restore points locked long enough)"
        )
        rep.errors += [f"lock too short: {p}" for p in cov.problems]
    if not rep.ok:
        raise UserError(f"check found {len(rep.errors)} errors; first: {rep.errors[0]}")
    _say("no errors")


@repo_app.command("unlock")
def repo_unlock(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    remove_all: Annotated[
        bool, typer.Option("--remove-all", help="Also remove live locks.")
    ] = False,
) -> None:
    """Remove stale locks (left by crashed processes)."""
    from ec2backup.repository.locks import unlock

    r = _open(repo, password_file)
    removed = unlock(r, remove_all=remove_all)
    _say(f"removed {len(removed)} locks")


# ---- repo key ------------------------------------------------------------------------------


@key_app.command("add")
def key_add(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    new_password_file: Annotated[
        str | None,
        typer.Option("--new-password-file", help="Else $EC2BACKUP_NEW_REPO_PASSWORD."),
    ] = None,
    kms_key_id: Annotated[str | None, typer.Option("--kms-key-id")] = None,
) -> None:
    """Add a wrapping of the master key (a new password, or a KMS key); no data is rewritten."""
    r = _open(repo, password_file)
    new_pw: bytes | None = None
    if kms_key_id is None:
        if new_password_file:
            new_pw = read_password(new_password_file)
        elif "EC2BACKUP_NEW_REPO_PASSWORD" in os.environ:
            new_pw = os.environ["EC2BACKUP_NEW_REPO_PASSWORD"].encode()
        else:
            raise UserError(
                "give --kms-key-id, --new-password-file or $EC2BACKUP_NEW_REPO_PASSWORD"
            )
    kid = r.add_key(password=new_pw, kms_key_id=kms_key_id)
    _say(f"added key {kid[:SHORT_ID]}")
    print(kid)


@key_app.command("list")
def key_list(
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List key files (the one used to open the repository is marked)."""
    from ec2backup.repository.repo import list_key_files

    r = _open(repo, password_file)
    files = list_key_files(r.backend)
    rows = [
        {
            "id": kid,
            "current": kid == r.key_id,
            "kind": kf.kind,
            "kms_key_id": kf.kms_key_id,
            "created": kf.created.isoformat(),
            "hostname": kf.hostname,
        }
        for kid, kf in sorted(files.items(), key=lambda kv: kv[1].created)
    ]
    if json_output(as_json):
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        mark = "*" if row["current"] else " "
        extra = f" {row['kms_key_id']}" if row["kms_key_id"] else ""
        print(f"{mark} {str(row['id'])[:SHORT_ID]}  {row['kind']:<8} {row['created']}{extra}")


@key_app.command("remove")
def key_remove(
    key_id: Annotated[str, typer.Argument(help="Key id (unique prefix).")],
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
) -> None:
    """Remove a key file (not the last one, nor the one used to open the repository)."""
    r = _open(repo, password_file)
    removed = r.remove_key(key_id)
    _say(f"removed key {removed[:SHORT_ID]}")


# ---- image ---------------------------------------------------------------------------------


@image_app.command("backup")
def image_backup(
    file: Annotated[Path, typer.Argument(help="Raw image file or block device.")],
    repo: RepoOpt,
    password_file: PasswordFileOpt = None,
    changed_blocks: Annotated[
        Path | None,
        typer.Option("--changed-blocks", help="JSON array of 512 KiB block indexes that changed."),
    ] = None,
    parent: Annotated[
        str | None, typer.Option("--parent", help="Restore point to build on.")
    ] = None,
    lock_wait: LockWaitOpt = 60.0,
) -> None:
    """Back up FILE (allocated extents only) and print the new restore point id."""
    from ec2backup.repository.image import backup_image

    blocks: list[int] | None = None
    if changed_blocks is not None:
        try:
            blocks = json.loads(changed_blocks.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read changed-block list {changed_blocks}: {exc}") from exc
        if not isinstance(blocks, list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in blocks
        ):
            raise UserError(f"{changed_blocks}: expected a JSON array of block indexes")
        if parent is None:
            raise UserError("--changed-blocks needs --parent")
    r = _open(repo, password_file)
    t0 = time.monotonic()
    with progress_bar(f"backup {file.name}") as bar:
        res = backup_image(
            r,
            file,
            parent=parent,
            changed_blocks=blocks,
            progress=bar.advance,
            on_start=bar.set_total,
            lock_wait=lock_wait,
        )
    dt = max(time.monotonic() - t0, 1e-9)
    st = res.volume.stats
    _say(
        f"restore point {res.restore_point[:SHORT_ID]}: {human_bytes(res.volume.size)} image, "
        f"read {human_bytes(st.bytes_read)} ({st.blocks_read} blocks), "
        f"new {st.blocks_new} blocks -> {human_bytes(st.bytes_new_stored)} stored, "
        f"{st.pages_written} map pages, {dt:.2f}s, "
        f"{st.bytes_read / dt / 1e6:.0f} MB/s read, {res.volume.size / dt / 1e6:.0f} MB/s logical"
        + (
            f"; adopted {res.packs_adopted} packs of an interrupted run"
            if res.packs_adopted
            else ""
        )
    )
    print(res.restore_point)


@image_app.command("restore")
def image_restore(
    restore_point: Annotated[str, typer.Argument(help="Restore point id (unique prefix).")],
    repo: RepoOpt,
    output: Annotated[Path, typer.Option("--output", "-o", help="Raw image to write (sparse).")],
    volume: Annotated[
        str | None, typer.Option("--volume", help="Volume id or index within the restore point.")
    ] = None,
    password_file: PasswordFileOpt = None,
) -> None:
    """Write one volume of a restore point as a sparse raw image (atomically)."""
    from ec2backup.repository.image import restore_image

    r = _open(repo, password_file)
    t0 = time.monotonic()
    with r.lock(exclusive=False, purpose="restore", wait=60):
        oid, rp = r.load_restore_point(restore_point)
        vol = rp.volume(volume)
        total = vol.stats.blocks_allocated * vol.block_size
        with progress_bar(f"restore {oid[:SHORT_ID]}", total=total) as bar:
            written = restore_image(r, vol, output, progress=bar.advance)
    dt = max(time.monotonic() - t0, 1e-9)
    _say(
        f"restored volume {vol.index} ({vol.name}) of {oid[:SHORT_ID]} to {output}: "
        f"{human_bytes(vol.size)} image, {human_bytes(written)} written, {dt:.2f}s, "
        f"{vol.size / dt / 1e6:.0f} MB/s logical"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(repo_app, name="repo")
    app.add_typer(image_app, name="image")

"""`ec2backup restore instance|volume` and `ec2backup restore-points list`."""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from typing import Annotated, Any, cast

import typer
from rich.console import Console
from rich.table import Table

from ec2backup.cli.output import json_output
from ec2backup.errors import UserError
from ec2backup.models.restore import RestoreInput, RestoreKind, RestoreOutput, RestoreSource
from ec2backup.temporal import TASK_QUEUE

restore_app = typer.Typer(help="Restore instances and volumes.", no_args_is_help=True)
points_app = typer.Typer(
    help="Every restore point: snapshot sets, replicas, backups.", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)


def _region(region: str | None) -> str:
    from ec2backup.cli.common import region as resolve_region

    return resolve_region(region)


def _source(source: str | None) -> RestoreSource | None:
    if source not in (None, "snapshot", "backup", "archive"):
        raise UserError("--source: must be snapshot, backup or archive")
    return cast(RestoreSource | None, source)


# Options of restores from the archive tier (both restore commands take them).
RetrievalTierOpt = Annotated[
    str,
    typer.Option(
        "--retrieval-tier", help="--source archive: Standard (hours) or Bulk (cheaper, slower)"
    ),
]
RetrievalPollOpt = Annotated[
    float | None,
    typer.Option(
        "--retrieval-poll-seconds",
        help="--source archive: how often to look whether the data is back (default by tier)",
    ),
]

# The restore worker that writes a backup's blocks in the target (backup and archive sources).
WorkerSubnetOpt = Annotated[
    str | None,
    typer.Option(
        "--worker-subnet",
        help="Subnet of the restore worker (default: the restore's subnet, else the zone's "
        "default subnet); it must reach Temporal and the repository",
    ),
]
WorkerTypeOpt = Annotated[
    str | None,
    typer.Option("--worker-instance-type", help="Instance type of the restore worker"),
]


def _start(req: RestoreInput, wait: bool) -> None:
    from ec2backup.cli.common import client as temporal_client
    from ec2backup.cli.watch import print_result

    async def go() -> int:
        client = await temporal_client()
        restore_id = f"restore-{req.kind}-{uuid.uuid4().hex[:8]}"
        handle = await client.start_workflow(
            "Restore", req, id=restore_id, task_queue=TASK_QUEUE, result_type=RestoreOutput
        )
        print(restore_id, flush=True)
        if not wait and not req.dry_run:
            return 0
        return await print_result(handle, f"restore {restore_id}", console)

    rc = asyncio.run(go())
    if rc:
        raise typer.Exit(rc)


def _last_clean(instance_id: str) -> str:
    """The id of the instance's newest clean restore point (ec2backup.anomaly), said on
    stderr with what it skips."""
    from ec2backup import catalog, installation
    from ec2backup.repository.repo import read_password

    found = catalog.build(
        installation.installation_key(create=False), read_password(None), instance_id=instance_id
    )
    entry = catalog.last_clean(found, instance_id)
    later = [
        e
        for e in found.entries
        if e.instance_id == instance_id and e.kind == "backup" and e.created > entry.created
    ]
    console.print(
        f"last clean restore point of {instance_id}: {entry.id} "
        f"({entry.created.isoformat(timespec='seconds')}); skipping {len(later)} later "
        "restore point(s)"
    )
    return entry.id


def _request(
    kind: RestoreKind,
    restore_point_id: str,
    *,
    source: str | None,
    repo: str | None,
    region: str | None,
    account_role_arn: str | None,
    to_region: str | None,
    to_account: str | None,
    kms_key: str | None,
    dry_run: bool,
    **specific: Any,
) -> RestoreInput:
    """The workflow input from the options both restore commands share, plus their own."""
    return RestoreInput(
        kind=kind,
        restore_point_id=restore_point_id,
        source=_source(source),
        repository=repo,
        region=_region(region),
        account_role_arn=account_role_arn,
        to_region=to_region,
        to_account_role_arn=to_account,
        kms_key_id=kms_key,
        dry_run=dry_run,
        **specific,
    )


@restore_app.command("instance")
def restore_instance(
    restore_point_id: str = typer.Argument(
        None, help="Snapshot set id (set-...) or backup id (or --last-clean INSTANCE_ID)"
    ),
    last_clean: str = typer.Option(
        None,
        "--last-clean",
        metavar="INSTANCE_ID",
        help="Restore this instance's newest clean restore point: the newest backup before "
        "its first ransomware-signal anomaly",
    ),
    source: str = typer.Option(
        None, "--source", help="snapshot|backup|archive (default: what the id is)"
    ),
    repo: str = typer.Option(None, "--repo", help="Repository URL (for backups)"),
    region: str = typer.Option(None, "--region", help="Where the restore point lives"),
    account_role_arn: str = typer.Option(
        None, "--account-role-arn", help="Role in the restore point's account"
    ),
    to_region: str = typer.Option(None, "--to-region"),
    to_account: str = typer.Option(None, "--to-account", help="Role ARN in the target account"),
    subnet: str = typer.Option(None, "--subnet"),
    instance_type: str = typer.Option(None, "--instance-type"),
    kms_key: str = typer.Option(None, "--kms-key"),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate only; change nothing"),
    wait: bool = typer.Option(False, "--wait"),
    retrieval_tier: RetrievalTierOpt = "Standard",
    retrieval_poll_seconds: RetrievalPollOpt = None,
    worker_subnet: WorkerSubnetOpt = None,
    worker_instance_type: WorkerTypeOpt = None,
) -> None:
    """Launch an instance with the original shape from a restore point."""
    if (restore_point_id is None) == (last_clean is None):
        raise UserError("give a restore point id or --last-clean INSTANCE_ID (one of them)")
    if last_clean is not None:
        restore_point_id = _last_clean(last_clean)
    _start(
        _request(
            "instance",
            restore_point_id,
            source=source,
            repo=repo,
            region=region,
            account_role_arn=account_role_arn,
            to_region=to_region,
            to_account=to_account,
            kms_key=kms_key,
            dry_run=dry_run,
            subnet_id=subnet,
            instance_type=instance_type,
            retrieval_tier=retrieval_tier,
            retrieval_poll_seconds=retrieval_poll_seconds,
            worker_subnet_id=worker_subnet,
            worker_instance_type=worker_instance_type,
        ),
        wait,
    )


@restore_app.command("volume")
def restore_volume(
    restore_point_id: str = typer.Argument(...),
    device: str = typer.Option(None, "--device", help="The volume's original device"),
    volume_id: str = typer.Option(None, "--volume-id", help="The original volume id"),
    az: str = typer.Option(None, "--az", help="Availability zone of the new volume"),
    volume_type: str = typer.Option(None, "--volume-type"),
    source: str = typer.Option(None, "--source", help="snapshot|backup|archive"),
    repo: str = typer.Option(None, "--repo"),
    region: str = typer.Option(None, "--region"),
    account_role_arn: str = typer.Option(None, "--account-role-arn"),
    to_region: str = typer.Option(None, "--to-region"),
    to_account: str = typer.Option(None, "--to-account"),
    kms_key: str = typer.Option(None, "--kms-key"),
    dry_run: bool = typer.Option(False, "--dry-run"),
    wait: bool = typer.Option(False, "--wait"),
    retrieval_tier: RetrievalTierOpt = "Standard",
    retrieval_poll_seconds: RetrievalPollOpt = None,
    worker_subnet: WorkerSubnetOpt = None,
    worker_instance_type: WorkerTypeOpt = None,
) -> None:
    """Create one volume from a restore point."""
    if not device and not volume_id:
        raise UserError("restore volume needs --device or --volume-id")
    _start(
        _request(
            "volume",
            restore_point_id,
            source=source,
            repo=repo,
            region=region,
            account_role_arn=account_role_arn,
            to_region=to_region,
            to_account=to_account,
            kms_key=kms_key,
            dry_run=dry_run,
            device=device,
            volume_id=volume_id,
            availability_zone=az,
            volume_type=volume_type,
            retrieval_tier=retrieval_tier,
            retrieval_poll_seconds=retrieval_poll_seconds,
            worker_subnet_id=worker_subnet,
            worker_instance_type=worker_instance_type,
        ),
        wait,
    )


@points_app.command("list")
def restore_points_list(
    instance: str = typer.Option(None, "--instance", help="Only this instance's"),
    region: str = typer.Option(
        None, "--region", help="Only this Region's snapshot sets (default: every known place)"
    ),
    account_role_arn: str = typer.Option(
        None, "--account-role-arn", help="Only snapshot sets in this account (its role)"
    ),
    repo: str = typer.Option(
        None,
        "--repo",
        help="Only this repository's backups, and sets of --region (default: every known one)",
    ),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every restore point of this installation, per instance and newest first: snapshot sets,
    replicas, backups and archived copies, with where each lives. From snapshot tags and the
    repositories the installation knows; nothing from Temporal history."""
    from ec2backup import aws, catalog, installation
    from ec2backup.cli.format import table_console
    from ec2backup.repository.repo import Repository, read_password

    password = read_password(None)
    if repo:  # named explicitly: it must open (one line naming it otherwise)
        Repository.open(repo, password)
    # Any of --region, --account-role-arn, --repo narrows the listing to what they name (the
    # Region defaulting as the AWS CLI's); without them: every place and repository.
    scoped = region is not None or account_role_arn is not None or repo is not None
    here = aws.default_region(region) or installation.home_region()
    found = catalog.build(
        installation.installation_key(create=False),
        password,
        instance_id=instance,
        places=[(here, account_role_arn)],
        repositories=[repo] if repo else [],
        known_places=not scoped,
        known_repositories=not scoped,
    )
    for p in found.problems:
        console.print(f"skipped {p.source}: {p.problem}")
    rows = [{**e.model_dump(mode="json"), "snapshot_set": e.snapshot_set_id} for e in found.entries]
    if json_output(as_json):
        print(
            json.dumps(
                {"restore_points": rows, "problems": [p.model_dump() for p in found.problems]},
                indent=2,
            )
        )
        return
    table = Table(
        "instance", "id", "kind", "created", "volumes", "where", "archive", "signal", "restores"
    )
    for e in found.entries:
        archive = ""
        if e.kind == "archive":
            archive = f"{e.storage_class}, retrieval needed" if e.retrieval_needed else "ready"
        signal = e.anomaly or ""
        if e.anomaly == "anomaly":
            signal = "ANOMALY: " + "; ".join(e.anomaly_reasons)
        elif e.anomaly == "resolved":
            signal = f"resolved anomaly ({e.anomaly_resolution})"
        if e.last_clean:
            signal = f"{signal} (last clean)".strip()
        table.add_row(
            e.instance_id or "",
            e.id[:20],
            e.kind,
            e.created.isoformat(timespec="seconds"),
            str(len(e.volumes)),
            e.where,
            archive,
            signal,
            e.restores,
        )
    table_console().print(table)
    for e in found.entries:
        if e.anomaly == "anomaly":
            print(
                f"warning: {e.id[:12]} of {e.instance_id}: ransomware signal: "
                f"{'; '.join(e.anomaly_reasons)}",
                file=sys.stderr,
            )


@points_app.command("resolve")
def restore_points_resolve(
    restore_point: str = typer.Argument(..., metavar="RP", help="A flagged backup's id"),
    reason: str = typer.Option(
        ..., "--reason", help="Why the anomaly was no attack (kept beside the restore point)"
    ),
    repo: str = typer.Option(
        None, "--repo", help="The repository holding it (default: found from the catalog)"
    ),
) -> None:
    """Resolve a ransomware-signal anomaly that was no attack (a volume encrypted on purpose, a
    bulk import): the restore point then counts as clean, for `--last-clean`, the signal's
    baseline and `on_anomaly: lock-last-clean`. The restore point itself never changes."""
    from ec2backup import anomaly, catalog, installation
    from ec2backup.repository.repo import Repository, read_password

    if not reason.strip():
        raise UserError("--reason: say why the anomaly was no attack")
    password = read_password(None)
    url = repo
    if url is None:
        found = catalog.locate(
            restore_point, installation.installation_key(create=False), password, source="backup"
        )
        url = found.repository
        if url is None:
            raise UserError(f"restore point {restore_point}: not an image-level backup")
    r = Repository.open(url, password)
    with r.lock(exclusive=False, purpose=f"resolve {restore_point}", wait=60):
        oid, resolution = r.resolve_anomaly(restore_point, reason.strip())
    _rid, rp = r.load_restore_point(oid)
    points = [
        (i, p)
        for i, p in r.list_restore_points()
        if p.source.kind == "ec2-instance" and p.source.instance_id == rp.source.instance_id
    ]
    clean = anomaly.last_clean(points)
    console.print(
        f"resolved the anomaly of {oid[:12]} ({rp.source.instance_id}): {resolution.reason}; "
        f"its last clean restore point is now {clean[:12] if clean else 'none'}"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(restore_app, name="restore")
    app.add_typer(points_app, name="restore-points")

"""`ec2backup archive RESTORE_POINT_ID --to URL`: start an `Archive` workflow."""

from __future__ import annotations

import asyncio
import os
import uuid

import typer
from rich.console import Console

from ec2backup.errors import UserError

console = Console(stderr=True, soft_wrap=True)


def archive(
    restore_point_id: str = typer.Argument(..., help="Restore point in the hot repository"),
    to: str = typer.Option(..., "--to", help="Archive repository, s3://bucket/prefix"),
    repo: str = typer.Option(
        None, "--repo", help="Hot repository URL (default $EC2BACKUP_REPO, else found from the id)"
    ),
    storage_class: str = typer.Option(
        None, "--storage-class", help="GLACIER or DEEP_ARCHIVE (default: the archive's, GLACIER)"
    ),
    policy: str = typer.Option("adhoc", "--policy", help="Policy name for search attributes"),
    wait: bool = typer.Option(False, "--wait", help="Show progress and the result"),
) -> None:
    """Copy a restore point into an archive repository (S3 Glacier classes); prints the id."""
    from ec2backup.archive.copy import STORAGE_CLASSES
    from ec2backup.cli.common import client as temporal_client
    from ec2backup.cli.watch import print_result
    from ec2backup.models.archive import ArchiveInput, ArchiveOutput
    from ec2backup.temporal import TASK_QUEUE, search_attributes

    # Default: the catalog finds the restore point's repository (on the orchestrator).
    source = repo or os.environ.get("EC2BACKUP_REPO") or None
    if not to.startswith("s3://"):
        raise UserError(f"--to: {to} is not an s3:// URL (archives live in S3 Glacier)")
    if storage_class is not None and storage_class not in STORAGE_CLASSES:
        raise UserError(f"--storage-class: must be one of {', '.join(STORAGE_CLASSES)}")
    req = ArchiveInput(
        restore_point_id=restore_point_id,
        source_repository=source,
        archive_repository=to,
        storage_class=storage_class,
        policy_name=policy,
    )

    async def go() -> int:
        client = await temporal_client()
        archive_id = f"archive-{uuid.uuid4().hex[:12]}"
        handle = await client.start_workflow(
            "Archive",
            req,
            id=archive_id,
            task_queue=TASK_QUEUE,
            result_type=ArchiveOutput,
            search_attributes=search_attributes("archive", policy),
        )
        print(archive_id, flush=True)
        if not wait:
            return 0
        return await print_result(handle, f"archive {archive_id}", console)

    rc = asyncio.run(go())
    if rc:
        raise typer.Exit(rc)


def register(app: typer.Typer) -> None:
    app.command("archive")(archive)

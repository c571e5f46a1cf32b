"""`ec2backup backup | session ...`: start, watch and control backup sessions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from temporalio.client import (
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from ec2backup.cli.common import client as temporal_client
from ec2backup.cli.common import region as resolve_region
from ec2backup.cli.common import run
from ec2backup.cli.format import (
    bytes_text,
    duration_text,
    report_summary,
    table_console,
    when_text,
)
from ec2backup.cli.output import json_output
from ec2backup.errors import NotFoundError, UserError
from ec2backup.models.common import PauseInput, ResumeInput
from ec2backup.models.policy import BackupPolicyOutput
from ec2backup.models.session import (
    BackupSessionInput,
    BackupSessionOutput,
    ImageBackupSpec,
    Placement,
    ProgressInput,
    ReplicationSpec,
    SessionProgress,
    WorkerSpec,
)
from ec2backup.repository.blockmap import EBS_BLOCK_SIZE
from ec2backup.temporal import TASK_QUEUE, search_attributes
from ec2backup.views import (
    POLICY_WORKFLOW,
    SESSION_WORKFLOW,
    failure_message,
    policy_report,
    session_query,
    session_row,
)


class ReadOption(StrEnum):
    """`backup --read` (ec2backup.readplan)."""

    auto = "auto"
    attached = "attached"
    ebs_direct = "ebs-direct"


session_app = typer.Typer(help="Watch and control backup sessions.", no_args_is_help=True)

console = Console(stderr=True, soft_wrap=True)

WATCH_POLL_SECONDS = 1.0


async def _handle(session_id: str) -> WorkflowHandle[Any, Any]:
    client = await temporal_client()
    handle = client.get_workflow_handle(session_id, result_type=BackupSessionOutput)
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            raise NotFoundError(f"session {session_id} does not exist") from None
        raise
    return handle


async def _progress(handle: WorkflowHandle[Any, Any]) -> SessionProgress | None:
    try:
        return await handle.query("progress", ProgressInput(), result_type=SessionProgress)
    except Exception:
        return None


async def _result(handle: WorkflowHandle[Any, Any]) -> BackupSessionOutput:
    result: BackupSessionOutput = await handle.result()
    return result


async def _policy_report(run_id: str) -> tuple[BackupPolicyOutput, str, str]:
    return await policy_report(await temporal_client(), run_id)


def register(app: typer.Typer) -> None:
    app.add_typer(session_app, name="session")

    @app.command("backup")
    def backup(
        instance_id: str = typer.Argument(..., help="The instance to back up"),
        region: str = typer.Option(
            None, "--region", help="Default: as the AWS CLI's (AWS_REGION, profile)"
        ),
        account_role_arn: str = typer.Option(
            None, "--account-role-arn", help="Role in the instance's account"
        ),
        repo: str = typer.Option(None, "--repo", help="Repository URL: image-level backup"),
        replicate_to: str | None = typer.Option(None, "--replicate-to", help="Target Region"),
        replicate_account: str = typer.Option(
            None, "--replicate-account", help="Role ARN in the target account"
        ),
        replicate_kms_key: str = typer.Option(None, "--replicate-kms-key"),
        worker_placement: str = typer.Option(
            "auto", "--worker-placement", help="backup|production|auto"
        ),
        policy_name: str = typer.Option("adhoc", "--policy"),
        copies: int | None = typer.Option(
            None,
            "--copies",
            min=1,
            max=8,
            help="Copies of each volume the worker reads in parallel (default: by size)",
        ),
        read: ReadOption = typer.Option(
            ReadOption.auto,
            "--read",
            help="How volumes are read: auto (per volume, the faster; the default), attached "
            "copies, or ebs-direct (GetSnapshotBlock, no copy)",
        ),
        wait: bool = typer.Option(False, "--wait", help="Show progress until it ends"),
    ) -> None:
        """Start a backup session of one instance; prints the session (workflow) id."""
        if worker_placement not in ("backup", "production", "auto"):
            raise UserError("--worker-placement: must be backup, production or auto")
        if (replicate_account or replicate_kms_key) and not replicate_to:
            replicate_to = resolve_region(region)
        region = resolve_region(region)
        req = BackupSessionInput(
            instance_id=instance_id,
            region=region,
            account_role_arn=account_role_arn,
            replication=ReplicationSpec(
                region=replicate_to,
                account_role_arn=replicate_account,
                kms_key_id=replicate_kms_key,
            )
            if replicate_to
            else None,
            image_backup=ImageBackupSpec(
                repository=repo,
                worker=WorkerSpec(
                    placement=cast(Placement, worker_placement), copies=copies, read=read.value
                ),
            )
            if repo
            else None,
            policy_name=policy_name,
        )

        async def start() -> int:
            client = await temporal_client()
            # The id is in plain tags and names: it must not reveal the instance (that stays
            # in the encrypted tag payload and the workflow input).
            session_id = f"backup-{uuid.uuid4().hex[:16]}"
            await client.start_workflow(
                SESSION_WORKFLOW,
                req,
                id=session_id,
                task_queue=TASK_QUEUE,
                search_attributes=search_attributes("backup", policy_name, instance_id),
            )
            print(session_id, flush=True)
            # One event loop and one client for start and watch: a Temporal client must not
            # outlive the loop it was made in.
            return await _watch_async(session_id) if wait else 0

        rc = run(start())
        if rc:
            raise typer.Exit(rc)

    @session_app.command("list")
    def session_list(
        limit: int = typer.Option(20, "--limit"),
        policy: str | None = typer.Option(None, "--policy", help="Only this policy's sessions"),
        status: str | None = typer.Option(
            None, "--status", help="running|completed|failed|canceled|terminated|timed-out"
        ),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Recent backup sessions, newest first: policy, instance, status, phase, bytes,
        duration (from each session's memo; no per-session query)."""
        query = session_query(policy, status)

        async def fetch() -> list[dict[str, Any]]:
            client = await temporal_client()
            now = datetime.now(UTC)
            return [
                await session_row(wf, now) async for wf in client.list_workflows(query, limit=limit)
            ]

        rows = run(fetch())
        if json_output(as_json):
            print(json.dumps(rows, indent=2))
            return
        table = Table(
            "session", "policy", "instance", "status", "phase", "bytes", "duration", "started"
        )
        for r in rows:
            table.add_row(
                r["session_id"],
                r["policy"] or "",
                r["instance"] or "",
                r["status"],
                r["phase"] or "",
                bytes_text(r["bytes_read"], r["bytes_stored"]),
                duration_text(r["duration"]),
                when_text(r["start_time"]),
            )
        table_console().print(table)

    @session_app.command("report")
    def session_report(
        run_id: str = typer.Argument(..., metavar="ID", help="A BackupPolicy run (or session) id"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every instance of one policy run: status, session, restore point, bytes, duration,
        error; then a summary (and what retention deleted)."""
        report, kind, status = run(_policy_report(run_id))
        if json_output(as_json):
            print(json.dumps(report.model_dump(mode="json"), indent=2))
            return
        out = table_console()
        paused = ", paused" if report.paused else ""
        what = "run" if kind == POLICY_WORKFLOW else "session"
        out.print(f"policy {report.policy} {what} {run_id}: {status}, phase {report.phase}{paused}")
        table = Table(
            "instance",
            "region",
            "status",
            "session",
            "restore point",
            "bytes",
            "duration",
            "error",
        )
        for o in report.instances:
            table.add_row(
                o.instance_id,
                o.region,
                o.status,
                o.session_id or "",
                o.restore_point_id or "",
                bytes_text(o.bytes_read, o.bytes_stored),
                duration_text(o.seconds),
                o.error or "",
            )
        out.print(table)
        out.print(report_summary(report, policy_run=kind == POLICY_WORKFLOW))
        for note in report.notes:
            out.print(f"note: {note}")

    @session_app.command("show")
    def session_show(session_id: str, as_json: bool = typer.Option(False, "--json")) -> None:
        """Progress of a session, and its result once finished."""

        async def fetch() -> dict[str, Any]:
            handle = await _handle(session_id)
            desc = await handle.describe()
            data: dict[str, Any] = {
                "session_id": session_id,
                "status": desc.status.name if desc.status else "",
            }
            progress = await _progress(handle)
            if progress is not None:
                data["progress"] = progress.model_dump()
            if desc.status == WorkflowExecutionStatus.COMPLETED:
                data["result"] = (await _result(handle)).model_dump()
            elif desc.status not in (None, WorkflowExecutionStatus.RUNNING):
                try:
                    await _result(handle)
                except Exception as exc:
                    data["error"] = failure_message(exc)
            return data

        data = run(fetch())
        if json_output(as_json):
            print(json.dumps(data, indent=2, default=str))
        else:
            Console().print_json(json.dumps(data, default=str))

    @session_app.command("watch")
    def session_watch(session_id: str) -> None:
        """Live progress bars until the session ends."""
        _watch(session_id, exit_code=True)

    @session_app.command("pause")
    def session_pause(session_id: str) -> None:
        """Stop reading at the next checkpoint; the worker stays until resume or cancel."""

        async def go() -> None:
            await (await _handle(session_id)).signal("pause", PauseInput())

        run(go())
        print(f"pause requested for {session_id}")

    @session_app.command("resume")
    def session_resume(session_id: str) -> None:
        """Continue a paused session from its checkpoint."""

        async def go() -> None:
            await (await _handle(session_id)).signal("resume", ResumeInput())

        run(go())
        print(f"resume requested for {session_id}")

    @session_app.command("cancel")
    def session_cancel(session_id: str) -> None:
        """Cancel a session (Temporal cancellation: cleanup runs, snapshots are kept)."""

        async def go() -> None:
            await (await _handle(session_id)).cancel()

        run(go())
        print(f"cancellation requested for {session_id}")


def _watch(session_id: str, exit_code: bool) -> None:
    started = time.monotonic()
    rc = run(_watch_async(session_id))
    console.print(f"watched for {time.monotonic() - started:.1f}s")
    if exit_code and rc:
        raise typer.Exit(rc)


async def _watch_async(session_id: str) -> int:
    """Live progress bars until the session ends; prints the result; 0 if it completed."""
    handle = await _handle(session_id)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=console,
        transient=False,
    ) as bars:
        tasks: dict[str, Any] = {}
        phase_task = bars.add_task("phase: starting", total=None)
        while True:
            desc = await handle.describe()
            progress = await _progress(handle)
            if progress is not None:
                bars.update(
                    phase_task,
                    description=f"phase: {progress.phase}"
                    + (" (paused)" if progress.paused else ""),
                )
                for v in progress.volumes:
                    total = v.blocks_total * EBS_BLOCK_SIZE
                    if v.volume_id not in tasks:
                        tasks[v.volume_id] = bars.add_task(f"{v.volume_id} {v.device}", total=total)
                    bars.update(tasks[v.volume_id], completed=v.blocks_done * EBS_BLOCK_SIZE)
            if desc.status != WorkflowExecutionStatus.RUNNING:
                break
            await asyncio.sleep(WATCH_POLL_SECONDS)
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result = await _result(handle)
        print(json.dumps(result.model_dump(), indent=2))
        return 0
    try:
        await _result(handle)
    except Exception as exc:
        status = desc.status.name if desc.status else ""
        console.print(f"session {session_id} {status}: {failure_message(exc)}")
    return 1

"""`ec2backup worker | backup | session ... | snapshots list`: drive backup sessions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowHandle
from temporalio.service import RPCError, RPCStatusCode

from ec2backup.errors import NotFoundError, UserError
from ec2backup.models import (
    BackupSessionInput,
    BackupSessionOutput,
    ImageBackupSpec,
    PauseInput,
    Placement,
    ProgressInput,
    ReplicationSpec,
    ResumeInput,
    SessionProgress,
    WorkerSpec,
)
from ec2backup.temporal import TASK_QUEUE, connect, search_attributes

session_app = typer.Typer(help="Watch and control backup sessions.", no_args_is_help=True)
snapshots_app = typer.Typer(
    help="Cloud-native restore points (from snapshot tags).", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)
EBS_BLOCK_SIZE = 512 * 1024
SESSION_WORKFLOW = "BackupSession"
WATCH_POLL_SECONDS = 1.0


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _client() -> Client:
    try:
        return await connect()
    except Exception as exc:
        raise UserError(f"cannot reach Temporal: {exc}") from None


async def _handle(session_id: str) -> WorkflowHandle[Any, Any]:
    client = await _client()
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


def failure_message(exc: BaseException) -> str:
    """Why a workflow failed: the first application error in the cause chain (the activity's
    own message, e.g. "instance i-... does not exist"), else the innermost cause."""
    from temporalio.exceptions import ApplicationError

    message = str(exc)
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ApplicationError) and str(cause):
            return str(cause)
        if str(cause):
            message = str(cause)
        cause = getattr(cause, "cause", None) or cause.__cause__
    return message


async def _result(handle: WorkflowHandle[Any, Any]) -> BackupSessionOutput:
    result: BackupSessionOutput = await handle.result()
    return result


def register(app: typer.Typer) -> None:
    app.add_typer(session_app, name="session")
    app.add_typer(snapshots_app, name="snapshots")

    @app.command("worker")
    def worker(
        temporal_address: str = typer.Option(None, "--temporal-address"),
        namespace: str = typer.Option(None, "--namespace"),
        region: list[str] = typer.Option([], "--region", help="Regions the janitor sweeps"),
        no_schedules: bool = typer.Option(
            False, "--no-schedules", help="Do not install the janitor schedule"
        ),
    ) -> None:
        """Run the orchestrator (workflows + control-plane activities on queue `ec2backup`)."""
        import logging

        from ec2backup.installation import home_region
        from ec2backup.orchestrator import run_worker

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
        _run(
            run_worker(
                temporal_address,
                namespace,
                region or [home_region()],
                install_schedules=not no_schedules,
            )
        )

    @app.command("backup")
    def backup(
        instance_id: str = typer.Argument(..., help="The instance to back up"),
        region: str = typer.Option(None, "--region", help="Default $AWS_DEFAULT_REGION"),
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
        wait: bool = typer.Option(False, "--wait", help="Show progress until it ends"),
    ) -> None:
        """Start a backup session of one instance; prints the session (workflow) id."""
        import os

        if worker_placement not in ("backup", "production", "auto"):
            raise UserError("--worker-placement: must be backup, production or auto")
        if (replicate_account or replicate_kms_key) and not replicate_to:
            replicate_to = region or os.environ.get("AWS_DEFAULT_REGION")
        region = region or os.environ.get("AWS_DEFAULT_REGION") or ""
        if not region:
            raise UserError("--region: no Region given and AWS_DEFAULT_REGION is not set")
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
                repository=repo, worker=WorkerSpec(placement=cast(Placement, worker_placement))
            )
            if repo
            else None,
            policy_name=policy_name,
        )

        async def start() -> int:
            client = await _client()
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

        rc = _run(start())
        if rc:
            raise typer.Exit(rc)

    @session_app.command("list")
    def session_list(
        limit: int = typer.Option(20, "--limit"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Recent backup sessions, newest first."""

        async def fetch() -> list[dict[str, Any]]:
            client = await _client()
            rows = []
            async for wf in client.list_workflows(
                f"WorkflowType = '{SESSION_WORKFLOW}'", limit=limit
            ):
                rows.append(
                    {
                        "session_id": wf.id,
                        "status": wf.status.name if wf.status else "",
                        "start_time": wf.start_time.isoformat(),
                        "close_time": wf.close_time.isoformat() if wf.close_time else None,
                    }
                )
            return rows

        rows = _run(fetch())
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("session", "status", "started", "closed")
        for r in rows:
            table.add_row(r["session_id"], r["status"], r["start_time"], r["close_time"] or "")
        Console().print(table)

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

        data = _run(fetch())
        if as_json:
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

        _run(go())
        print(f"pause requested for {session_id}")

    @session_app.command("resume")
    def session_resume(session_id: str) -> None:
        """Continue a paused session from its checkpoint."""

        async def go() -> None:
            await (await _handle(session_id)).signal("resume", ResumeInput())

        _run(go())
        print(f"resume requested for {session_id}")

    @session_app.command("cancel")
    def session_cancel(session_id: str) -> None:
        """Cancel a session (Temporal cancellation: cleanup runs, snapshots are kept)."""

        async def go() -> None:
            await (await _handle(session_id)).cancel()

        _run(go())
        print(f"cancellation requested for {session_id}")

    @snapshots_app.command("list")
    def snapshots_list(
        instance: str = typer.Option(None, "--instance", help="Only this instance"),
        region: str = typer.Option(None, "--region"),
        account_role_arn: str = typer.Option(None, "--account-role-arn"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Restore points rebuilt from the encrypted snapshot tags alone."""
        import os

        from ec2backup import installation, snapshots

        region = region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        entries, problems = snapshots.catalog(
            region,
            account_role_arn,
            installation.installation_key(create=False),
            instance_id=instance,
        )
        for p in problems:
            console.print(f"[yellow]skipped {p.snapshot_id}: {p.problem}[/yellow]")
        if as_json:
            print(
                json.dumps(
                    {
                        "restore_points": [e.model_dump(mode="json") for e in entries],
                        "problems": [p.model_dump() for p in problems],
                    },
                    indent=2,
                )
            )
            return
        table = Table("set", "instance", "created", "policy", "snapshots", "replica", "complete")
        for e in entries:
            table.add_row(
                e.set_id,
                e.instance_id,
                e.created.isoformat(timespec="seconds"),
                e.policy,
                ", ".join(s.snapshot_id for s in e.snapshots),
                "yes" if e.replica else "",
                "yes" if e.complete else "NO",
            )
        Console().print(table)


def _watch(session_id: str, exit_code: bool) -> None:
    started = time.monotonic()
    rc = _run(_watch_async(session_id))
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

"""`ec2backup worker | backup | session ... | snapshots list`: drive backup sessions."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import typer
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from ec2backup.errors import NotFoundError, UserError
from ec2backup.models import (
    BackupPolicyOutput,
    BackupSessionInput,
    BackupSessionOutput,
    ImageBackupSpec,
    InstanceOutcome,
    PauseInput,
    Placement,
    ProgressInput,
    ReplicationSpec,
    ResumeInput,
    SessionProgress,
    WorkerSpec,
)
from ec2backup.temporal import INSTANCE_ID, POLICY_NAME, TASK_QUEUE, connect, search_attributes

session_app = typer.Typer(help="Watch and control backup sessions.", no_args_is_help=True)
snapshots_app = typer.Typer(
    help="Cloud-native restore points (from snapshot tags).", no_args_is_help=True
)
console = Console(stderr=True, soft_wrap=True)
EBS_BLOCK_SIZE = 512 * 1024
SESSION_WORKFLOW = "BackupSession"
POLICY_WORKFLOW = "BackupPolicy"
# A query answers within seconds when a worker is up; without one it would wait for the server.
QUERY_TIMEOUT = timedelta(seconds=10)
# Child session results fetched at once by `session report` (restore points of snapshot-only
# sessions and failed sessions' causes, which the policy run does not record).
REPORT_FETCH_CONCURRENCY = 16
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


def register_status(app: typer.Typer) -> None:
    @app.command("status")
    def status(as_json: bool = typer.Option(False, "--json")) -> None:
        """The last run of every applied policy (succeeded, failed, running) and the next."""
        rows = _run(_policies_status())
        if as_json:
            print(json.dumps(rows, indent=2))
            return
        table = Table("policy", "paused", "last run", "status", "instances", "next run", "archive")
        for r in rows:
            archive = ""
            if r.get("archive_last_status"):
                archive = f"{r['archive_last_status']}; next {_when(r['archive_next_run'])}"
            table.add_row(
                r["policy"],
                "yes" if r["paused"] else "",
                _when(r["last_run_start"]),
                status_text(r),
                "" if r["instances"] is None else str(r["instances"]),
                _when(r["next_run"]),
                archive,
            )
        _table_console().print(table)


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
        policy: str | None = typer.Option(None, "--policy", help="Only this policy's sessions"),
        status: str | None = typer.Option(
            None, "--status", help="running|completed|failed|canceled|terminated|timed-out"
        ),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Recent backup sessions, newest first: policy, instance, status, phase, bytes,
        duration (from each session's memo; no per-session query)."""
        query = _session_query(policy, status)

        async def fetch() -> list[dict[str, Any]]:
            client = await _client()
            now = datetime.now(UTC)
            return [
                await _session_row(wf, now)
                async for wf in client.list_workflows(query, limit=limit)
            ]

        rows = _run(fetch())
        if as_json:
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
                _bytes_text(r["bytes_read"], r["bytes_stored"]),
                duration_text(r["duration"]),
                _when(r["start_time"]),
            )
        _table_console().print(table)

    @session_app.command("report")
    def session_report(
        run_id: str = typer.Argument(..., metavar="ID", help="A BackupPolicy run (or session) id"),
        as_json: bool = typer.Option(False, "--json"),
    ) -> None:
        """Every instance of one policy run: status, session, restore point, bytes, duration,
        error; then a summary (and what retention deleted)."""
        report, kind, status = _run(_policy_report(run_id))
        if as_json:
            print(json.dumps(report.model_dump(mode="json"), indent=2))
            return
        out = _table_console()
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
                _bytes_text(o.bytes_read, o.bytes_stored),
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


# ---- the operator's views: session list, session report, status ---------------------------
# `--status` values -> Temporal's ExecutionStatus (visibility query values).
_STATUS_QUERY = {
    "running": "Running",
    "completed": "Completed",
    "failed": "Failed",
    "canceled": "Canceled",
    "cancelled": "Canceled",
    "terminated": "Terminated",
    "timed-out": "TimedOut",
    "continued-as-new": "ContinuedAsNew",
}
# A session's workflow status -> its outcome in a report (InstanceOutcome.status).
_OUTCOME = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.CANCELED: "canceled",
}


def _quoted(value: str, option: str) -> str:
    if "'" in value or "\\" in value:
        raise UserError(f"{option}: '{value}' must not contain quotes or backslashes")
    return f"'{value}'"


def _session_query(policy: str | None, status: str | None) -> str:
    parts = [f"WorkflowType = '{SESSION_WORKFLOW}'"]
    if policy:
        parts.append(f"PolicyName = {_quoted(policy, '--policy')}")
    if status:
        value = _STATUS_QUERY.get(status.lower().replace("_", "-"))
        if value is None:
            choices = ", ".join(k for k in _STATUS_QUERY if k != "cancelled")
            raise UserError(f"--status: '{status}' is not one of {choices}")
        parts.append(f"ExecutionStatus = '{value}'")
    else:
        # A session that continued as new is listed once: as its current run.
        parts.append("ExecutionStatus != 'ContinuedAsNew'")
    return " AND ".join(parts)


async def _memo(wf: WorkflowExecution) -> dict[str, Any]:
    """The session's memo (phase, policy, instance, region, bytes); {} for older sessions."""
    try:
        return dict(await wf.memo())
    except Exception:
        return {}


def _seconds(wf: WorkflowExecution, now: datetime) -> float:
    end = wf.close_time or now
    return round(max(0.0, (end - wf.start_time).total_seconds()), 3)


async def _session_row(wf: WorkflowExecution, now: datetime) -> dict[str, Any]:
    """One `session list` row. JSON carries numbers: bytes (stored) and bytes_read in bytes,
    duration in seconds (until now for a running session)."""
    memo = await _memo(wf)
    attrs = wf.typed_search_attributes
    stored = int(memo.get("bytes_stored") or 0)
    return {
        "session_id": wf.id,
        "policy": memo.get("policy") or attrs.get(POLICY_NAME),
        "instance": memo.get("instance") or attrs.get(INSTANCE_ID),
        "region": memo.get("region"),
        "status": wf.status.name if wf.status else "",
        "phase": memo.get("phase"),
        "bytes": stored,
        "bytes_read": int(memo.get("bytes_read") or 0),
        "bytes_stored": stored,
        "duration": _seconds(wf, now),
        "start_time": wf.start_time.isoformat(timespec="seconds"),
        "close_time": wf.close_time.isoformat(timespec="seconds") if wf.close_time else None,
    }


def _table_console() -> Console:
    """stdout; when it is not a terminal (a pipe, a log), wide enough not to fold rows."""
    import os
    import sys

    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=250)


def _bytes_text(read: int, stored: int) -> str:
    from ec2backup.progress import human_bytes

    text = human_bytes(stored)
    return f"{text} ({human_bytes(read)} read)" if read else text


def duration_text(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _when(iso: str | None) -> str:
    """An ISO time from JSON rows (UTC) as `2024-05-01 03:00:12Z`."""
    return iso[:19].replace("T", " ") + "Z" if iso else ""


def report_summary(report: BackupPolicyOutput, policy_run: bool = True) -> str:
    """`2 completed, 1 failed; retention: deleted 3 snapshot sets (6 snapshots), ...`."""
    counts: dict[str, int] = {}
    for o in report.instances:
        counts[o.status] = counts.get(o.status, 0) + 1
    order = ["completed", "failed", "canceled", "running", "pending"]
    parts = [f"{counts.pop(k)} {k}" for k in order if k in counts]
    parts += [f"{n} {k}" for k, n in sorted(counts.items())]
    line = ", ".join(parts) or "no instances"
    r = report.retention
    if not policy_run:
        return line
    if r is None:
        return f"{line}; retention: not run" if report.phase == "done" else line
    from ec2backup.progress import human_bytes

    deleted = [
        f"{len(r.deleted_snapshot_sets)} snapshot sets ({len(r.deleted_snapshots)} snapshots)",
        f"{len(r.deleted_replica_sets)} replica sets ({len(r.deleted_replicas)} replicas)",
        f"{len(r.forgotten_restore_points)} restore points",
    ]
    verb = "would delete" if r.dry_run else "deleted"
    pruned = f", pruned {human_bytes(r.pruned_bytes)}" if r.pruned_bytes else ""
    return f"{line}; retention: {verb} {', '.join(deleted)}{pruned}"


async def _policy_report(run_id: str) -> tuple[BackupPolicyOutput, str, str]:
    """The report of a BackupPolicy run (or a one-row one of a BackupSession), the workflow's
    type and its status."""
    client = await _client()
    handle = client.get_workflow_handle(run_id)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise NotFoundError(f"no policy run or session {run_id}") from None
        raise
    status = desc.status.name if desc.status else ""
    if desc.workflow_type == SESSION_WORKFLOW:
        session = client.get_workflow_handle(run_id, result_type=BackupSessionOutput)
        return await _session_report(session, desc), SESSION_WORKFLOW, status
    if desc.workflow_type != POLICY_WORKFLOW:
        raise UserError(f"{run_id} is a {desc.workflow_type} workflow, not a policy run or session")
    policy_run = client.get_workflow_handle(run_id, result_type=BackupPolicyOutput)
    report = await _run_report(policy_run, desc)
    await _from_sessions(client, report)
    return report, POLICY_WORKFLOW, status


async def _run_report(
    handle: WorkflowHandle[Any, Any], desc: WorkflowExecutionDescription
) -> BackupPolicyOutput:
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        done: BackupPolicyOutput = await handle.result()
        return done
    report: BackupPolicyOutput | None = None
    problem = ""
    try:
        # Running: the live report. Closed (failed, terminated): the worker replays the
        # history up to the end, so the report shows where it stopped.
        report = await handle.query(
            "report", result_type=BackupPolicyOutput, rpc_timeout=QUERY_TIMEOUT
        )
    except Exception as exc:
        problem = f"report query failed: {failure_message(exc)}"
    if report is None:
        report = BackupPolicyOutput(
            policy=desc.typed_search_attributes.get(POLICY_NAME) or "", phase="unknown"
        )
        report.notes.append(problem)
    if desc.status != WorkflowExecutionStatus.RUNNING:
        try:
            await handle.result()
        except Exception as exc:
            status = desc.status.name.lower() if desc.status else "closed"
            report.notes.append(f"run {status}: {failure_message(exc)}")
    return report


async def _from_sessions(client: Client, report: BackupPolicyOutput) -> None:
    """What the policy run does not record, from its sessions (a few at a time): a
    snapshot-only session's restore point is its snapshot set (what `restore instance` takes),
    and a failed session's error is its own cause (the run keeps only "Activity task failed")."""
    wanted = [
        o
        for o in report.instances
        if o.session_id
        and ((o.status == "completed" and not o.restore_point_id) or o.status == "failed")
    ]
    limit = asyncio.Semaphore(REPORT_FETCH_CONCURRENCY)

    async def fill(o: InstanceOutcome) -> None:
        handle = client.get_workflow_handle(str(o.session_id), result_type=BackupSessionOutput)
        async with limit:
            try:
                result: BackupSessionOutput = await handle.result()
            except RPCError:  # the session's history may be gone: keep what the run says
                return
            except Exception as exc:
                if o.status == "failed":
                    o.error = failure_message(exc)
                return
        o.restore_point_id = result.restore_point_id or result.snapshot_set_id

    await asyncio.gather(*(fill(o) for o in wanted))


async def _session_report(
    handle: WorkflowHandle[Any, Any], desc: WorkflowExecutionDescription
) -> BackupPolicyOutput:
    memo = await _memo(desc)
    attrs = desc.typed_search_attributes
    running = desc.status == WorkflowExecutionStatus.RUNNING
    outcome = InstanceOutcome(
        instance_id=memo.get("instance") or attrs.get(INSTANCE_ID) or "",
        region=memo.get("region") or "",
        session_id=desc.id,
        status=_OUTCOME.get(desc.status, "failed") if desc.status else "failed",
        bytes_read=int(memo.get("bytes_read") or 0),
        bytes_stored=int(memo.get("bytes_stored") or 0),
        seconds=None if running else _seconds(desc, datetime.now(UTC)),
    )
    if desc.status == WorkflowExecutionStatus.COMPLETED:
        result: BackupSessionOutput = await handle.result()
        outcome.restore_point_id = result.restore_point_id or result.snapshot_set_id
        outcome.bytes_read = sum(v.bytes_read for v in result.volumes)
        outcome.bytes_stored = sum(v.bytes_stored for v in result.volumes)
    elif not running:
        try:
            await handle.result()
        except Exception as exc:
            outcome.error = failure_message(exc)
    notes = [f"session {desc.id}: phase {memo['phase']}"] if memo.get("phase") else []
    return BackupPolicyOutput(
        policy=memo.get("policy") or attrs.get(POLICY_NAME) or "",
        phase="backing up" if running else "done",
        instances=[outcome],
        notes=notes,
    )


async def _policies_status() -> list[dict[str, Any]]:
    from ec2backup.schedules import SCHEDULE_PREFIX

    client = await _client()
    ids = [s.id async for s in await client.list_schedules() if s.id.startswith(SCHEDULE_PREFIX)]
    rows = await asyncio.gather(*(_policy_status(client, sid, SCHEDULE_PREFIX) for sid in ids))
    return sorted(rows, key=lambda r: str(r["policy"]))


async def _policy_status(client: Client, schedule_id: str, prefix: str) -> dict[str, Any]:
    """One `status` row. last_status: succeeded (the run completed and so did every
    instance), failed (failed_instances of instances, or the run itself failed), running,
    canceled, unknown (the run is no longer in Temporal), or null (never run)."""
    desc = await client.get_schedule_handle(schedule_id).describe()
    nxt = desc.info.next_action_times[:1]
    row: dict[str, Any] = {
        "policy": schedule_id.removeprefix(prefix),
        "paused": desc.schedule.state.paused,
        "last_run_id": None,
        "last_run_start": None,
        "last_status": None,
        "run_status": None,
        "instances": None,
        "completed_instances": None,
        "failed_instances": None,
        "next_run": nxt[0].isoformat(timespec="seconds") if nxt else None,
    }
    row.update(await _archive_status(client, row["policy"]))
    if not desc.info.recent_actions:
        return row
    last = max(desc.info.recent_actions, key=lambda a: a.started_at)
    run_id = getattr(last.action, "workflow_id", None)
    row["last_run_start"] = last.started_at.isoformat(timespec="seconds")
    row["last_run_id"] = run_id
    if run_id:
        row.update(await _last_run(client, run_id))
    return row


async def _archive_status(client: Client, policy: str) -> dict[str, Any]:
    """The archive schedule's last run (workflow status; archived/failed counts) and next run;
    all null for a policy without an archive section."""
    from ec2backup.models import ArchivePolicyOutput
    from ec2backup.schedules import archive_schedule_id

    out: dict[str, Any] = {"archive_last_status": None, "archive_next_run": None}
    try:
        desc = await client.get_schedule_handle(archive_schedule_id(policy)).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return out
        raise
    nxt = desc.info.next_action_times[:1]
    out["archive_next_run"] = nxt[0].isoformat(timespec="seconds") if nxt else None
    if not desc.info.recent_actions:
        out["archive_last_status"] = "never run"
        return out
    last = max(desc.info.recent_actions, key=lambda a: a.started_at)
    run_id = getattr(last.action, "workflow_id", None)
    if not run_id:
        return out
    handle = client.get_workflow_handle(run_id, result_type=ArchivePolicyOutput)
    try:
        status = (await handle.describe()).status
    except RPCError as exc:
        if exc.status != RPCStatusCode.NOT_FOUND:
            raise
        out["archive_last_status"] = "unknown"
        return out
    text = status.name.lower() if status else "unknown"
    if status == WorkflowExecutionStatus.COMPLETED:
        result = await handle.result()
        failed = sum(a.status not in ("completed", "already archived") for a in result.archived)
        text = f"failed ({failed} of {len(result.archived)})" if failed else "succeeded"
        text += f", {len(result.archived)} archived"
    out["archive_last_status"] = text
    return out


async def _last_run(client: Client, run_id: str) -> dict[str, Any]:
    handle = client.get_workflow_handle(run_id, result_type=BackupPolicyOutput)
    try:
        desc = await handle.describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return {"last_status": "unknown"}
        raise
    status = desc.status
    out: dict[str, Any] = {"run_status": status.name if status else None}
    report: BackupPolicyOutput | None = None
    try:
        if status == WorkflowExecutionStatus.COMPLETED:
            report = await handle.result()
        else:
            report = await handle.query(
                "report", result_type=BackupPolicyOutput, rpc_timeout=QUERY_TIMEOUT
            )
    except Exception:
        report = None
    if report is not None:
        out["instances"] = len(report.instances)
        out["completed_instances"] = sum(o.status == "completed" for o in report.instances)
        out["failed_instances"] = sum(o.status in ("failed", "canceled") for o in report.instances)
    if status == WorkflowExecutionStatus.RUNNING:
        out["last_status"] = "running"
    elif status == WorkflowExecutionStatus.COMPLETED:
        all_done = report is not None and out["completed_instances"] == out["instances"]
        out["last_status"] = "succeeded" if all_done else "failed"
    elif status == WorkflowExecutionStatus.CANCELED:
        out["last_status"] = "canceled"
    else:  # failed, terminated, timed out
        out["last_status"] = "failed"
    return out


def status_text(row: dict[str, Any]) -> str:
    """`succeeded`, `failed (2 of 5)`, `failed (terminated)`, `running (3 of 5 done)`, ..."""
    status = row["last_status"]
    if status is None:
        return "never run"
    n, ok, bad = row["instances"], row["completed_instances"], row["failed_instances"]
    if status == "running" and n is not None:
        return f"running ({ok + bad} of {n} done)"
    if status == "failed" and row["run_status"] not in (None, "COMPLETED"):
        return f"failed ({str(row['run_status']).lower().replace('_', ' ')})"
    if status == "failed" and n is not None:
        return f"failed ({n - ok} of {n})"
    return str(status)

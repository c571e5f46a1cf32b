"""Read models behind `session list|report|show` and `status`: what Temporal's visibility,
memos, queries and results say about sessions, policy runs and schedules, as plain rows."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.client import (
    Client,
    WorkflowExecution,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowHandle,
)
from temporalio.service import RPCError, RPCStatusCode

from ec2backup.errors import NotFoundError, UserError
from ec2backup.models.policy import BackupPolicyOutput, InstanceOutcome, OutcomeStatus
from ec2backup.models.session import (
    BackupSessionOutput,
)
from ec2backup.temporal import INSTANCE_ID, OUTCOME, POLICY_NAME

SESSION_WORKFLOW = "BackupSession"

POLICY_WORKFLOW = "BackupPolicy"

# A query answers within seconds when a worker is up; without one it would wait for the server.
QUERY_TIMEOUT = timedelta(seconds=10)

# Child session results fetched at once by `session report` (restore points of snapshot-only
# sessions and failed sessions' causes, which the policy run does not record).
REPORT_FETCH_CONCURRENCY = 16


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
_OUTCOME: dict[WorkflowExecutionStatus, OutcomeStatus] = {
    WorkflowExecutionStatus.RUNNING: "running",
    WorkflowExecutionStatus.COMPLETED: "completed",
    WorkflowExecutionStatus.CANCELED: "canceled",
}


def _quoted(value: str, option: str) -> str:
    if "'" in value or "\\" in value:
        raise UserError(f"{option}: '{value}' must not contain quotes or backslashes")
    return f"'{value}'"


def session_query(policy: str | None, status: str | None) -> str:
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


async def session_row(wf: WorkflowExecution, now: datetime) -> dict[str, Any]:
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


async def policy_report(client: Client, run_id: str) -> tuple[BackupPolicyOutput, str, str]:
    """The report of a BackupPolicy run (or a one-row one of a BackupSession), the workflow's
    type and its status."""
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


async def policies_status(client: Client) -> list[dict[str, Any]]:
    from ec2backup.schedules import SCHEDULE_PREFIX

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
        "outcome": None,  # the run's Outcome search attribute: succeeded, partial, failed
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
    from ec2backup.models.archive import ArchivePolicyOutput
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
    out: dict[str, Any] = {
        "run_status": status.name if status else None,
        "outcome": desc.typed_search_attributes.get(OUTCOME),
    }
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

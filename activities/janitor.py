"""The janitor: remove worker instances, volumes and session secrets whose session has closed.

A terminated workflow runs no cleanup code; this sweep (the `Janitor` workflow, on a schedule)
finds what sessions left by tag and asks Temporal whether each session is still running.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from ec2backup import aws, workers
from ec2backup.activity_support import classify
from ec2backup.models.janitor import JanitorInput, JanitorOutput
from ec2backup.restore import launch as restore_launch
from ec2backup.restore import plan as restore_plan


async def _status(workflow_id: str) -> WorkflowExecutionStatus | None:
    """The workflow's status, None when Temporal does not know it (e.g. expired)."""
    try:
        desc = await activity.client().get_workflow_handle(workflow_id).describe()
    except RPCError as exc:
        if exc.status == RPCStatusCode.NOT_FOUND:
            return None
        raise
    return desc.status


async def _session_open(session_id: str) -> bool:
    return await _status(session_id) == WorkflowExecutionStatus.RUNNING


def _restore_ids(region: str, role_arn: str | None) -> set[str]:
    """Ids of restores that left temporary snapshots, or volumes or instances not handed over
    (tagged pending), in this place."""
    ec2 = aws.client("ec2", region, role_arn)
    found: set[str] = set()
    for snap in ec2.describe_snapshots(
        OwnerIds=["self"], Filters=[{"Name": "tag-key", "Values": [restore_plan.TEMP_KEY]}]
    )["Snapshots"]:
        found.update(t["Value"] for t in snap.get("Tags", []) if t["Key"] == restore_plan.TEMP_KEY)
    for vol in ec2.describe_volumes(
        Filters=[{"Name": "tag-key", "Values": [restore_plan.PENDING_KEY]}]
    )["Volumes"]:
        found.update(
            t["Value"] for t in vol.get("Tags", []) if t["Key"] == restore_plan.PENDING_KEY
        )
    for image in ec2.describe_images(
        Owners=["self"], Filters=[{"Name": "tag-key", "Values": [restore_plan.PENDING_KEY]}]
    )["Images"]:
        found.update(
            t["Value"] for t in image.get("Tags", []) if t["Key"] == restore_plan.PENDING_KEY
        )
    for reservation in ec2.describe_instances(
        Filters=[{"Name": "tag-key", "Values": [restore_plan.PENDING_KEY]}]
    )["Reservations"]:
        for inst in reservation["Instances"]:
            found.update(
                t["Value"] for t in inst.get("Tags", []) if t["Key"] == restore_plan.PENDING_KEY
            )
    return found


def _session_secrets(region: str, role_arn: str | None) -> dict[str, str]:
    """Session id -> secret name of every per-session secret still present."""
    sm = aws.client("secretsmanager", region, role_arn)
    found: dict[str, str] = {}
    kwargs: dict[str, object] = {}
    while True:
        page = sm.list_secrets(**kwargs)
        for secret in page.get("SecretList", []):
            if not secret["Name"].startswith(workers.SESSION_SECRET_PREFIX):
                continue
            tags = {t["Key"]: t["Value"] for t in secret.get("Tags", [])}
            sid = tags.get("ec2backup:session")
            if sid:
                found[sid] = secret["Name"]
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


@activity.defn(name="janitor_sweep")
async def janitor_sweep(req: JanitorInput) -> JanitorOutput:
    out = JanitorOutput()
    try:
        for region in req.regions:
            for role_arn in req.role_arns:
                resources = await asyncio.to_thread(
                    workers.sessions_with_resources, region, role_arn
                )
                secrets = await asyncio.to_thread(_session_secrets, region, role_arn)
                for session_id in sorted(set(resources) | set(secrets)):
                    out.sessions_checked += 1
                    activity.heartbeat(session_id)
                    if await _session_open(session_id):
                        continue
                    released = await asyncio.to_thread(
                        workers.release, session_id, region, role_arn, secrets.get(session_id)
                    )
                    out.instances_terminated += released.instances_terminated
                    out.volumes_deleted += released.volumes_deleted
                    if session_id in secrets:
                        out.secrets_deleted.append(secrets[session_id])
                # Restores: a finished one leaves nothing temporary; one that ended otherwise
                # (terminated, failed without cleanup) leaves nothing at all.
                for restore_id in sorted(await asyncio.to_thread(_restore_ids, region, role_arn)):
                    status = await _status(restore_id)
                    if status == WorkflowExecutionStatus.RUNNING:
                        continue
                    cleaned = await asyncio.to_thread(
                        restore_launch.cleanup,
                        restore_id,
                        region,
                        role_arn,
                        status == WorkflowExecutionStatus.COMPLETED,
                    )
                    out.instances_terminated += cleaned.instances_terminated
                    out.volumes_deleted += cleaned.volumes_deleted
    except Exception as exc:
        raise classify(exc) from exc
    return out

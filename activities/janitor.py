"""The janitor: remove worker instances, volumes and session secrets whose session has closed,
and give back the budget shares (ec2backup.budget) such sessions still hold.

A terminated workflow runs no cleanup code; this sweep (the `Janitor` workflow, on a schedule)
finds what sessions left by tag and asks Temporal whether each session is still running. It
sees only resources tagged with its own installation id (`installation.INSTALLATION_TAG`):
another installation in the same account keeps its workers, secrets and pending restores.
"""

from __future__ import annotations

import asyncio

from temporalio import activity
from temporalio.client import WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.service import RPCError, RPCStatusCode

from ec2backup import aws, imagebackup, installation, workers
from ec2backup.activity_support import repository_password, role_session
from ec2backup.models.budget import (
    BudgetState,
    BudgetStateInput,
    ReleaseBudgetInput,
    ReleaseBudgetOutput,
)
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
    """Ids of this installation's restores that left temporary snapshots, or volumes, images
    or instances not handed over (tagged pending), in this place."""
    ec2 = aws.client("ec2", region, role_arn)
    ours = installation.installation_filter()
    temp = [{"Name": "tag-key", "Values": [restore_plan.TEMP_KEY]}, ours]
    pending = [{"Name": "tag-key", "Values": [restore_plan.PENDING_KEY]}, ours]
    tagged: list[tuple[str, list[dict[str, str]]]] = []
    for snap in ec2.describe_snapshots(OwnerIds=["self"], Filters=temp)["Snapshots"]:
        tagged.append((restore_plan.TEMP_KEY, snap.get("Tags", [])))
    for vol in ec2.describe_volumes(Filters=pending)["Volumes"]:
        tagged.append((restore_plan.PENDING_KEY, vol.get("Tags", [])))
    for image in ec2.describe_images(Owners=["self"], Filters=pending)["Images"]:
        tagged.append((restore_plan.PENDING_KEY, image.get("Tags", [])))
    for reservation in ec2.describe_instances(Filters=pending)["Reservations"]:
        for inst in reservation["Instances"]:
            tagged.append((restore_plan.PENDING_KEY, inst.get("Tags", [])))
    return {t["Value"] for key, tags in tagged for t in tags if t["Key"] == key}


def _session_secrets(region: str) -> dict[str, str]:
    """Session id -> secret name of every per-session secret of this installation still
    present in the backup account, where they live (another installation's, in the same
    account, are not ours to remove)."""
    sm = aws.client("secretsmanager", region)
    found: dict[str, str] = {}
    kwargs: dict[str, object] = {}
    while True:
        page = sm.list_secrets(**kwargs)
        for secret in page.get("SecretList", []):
            if not secret["Name"].startswith(workers.SESSION_SECRET_PREFIX):
                continue
            if not installation.is_ours(secret.get("Tags")):
                continue
            tags = {t["Key"]: t["Value"] for t in secret.get("Tags", [])}
            sid = tags.get("ec2backup:session")
            if sid:
                found[sid] = secret["Name"]
        if not page.get("NextToken"):
            return found
        kwargs["NextToken"] = page["NextToken"]


def _places(req: JanitorInput, out: JanitorOutput) -> list[tuple[str, str | None]]:
    """Where to sweep: the places asked for, and (by default) every place the installation
    remembers (its snapshot sets, replicas, restore targets) with the backup account in each
    of their Regions (where its workers run)."""
    places = {(region, role) for region in req.regions for role in req.role_arns}
    if req.known_places:
        try:
            known = installation.known_places()
        except Exception as exc:  # no installation key yet, or Secrets Manager unreachable
            out.failures.append(f"known places not read: {aws.error_code(exc) or exc}")
            known = []
        places |= set(known) | {(region, None) for region, _ in known}
    return sorted(places, key=lambda p: (p[0], p[1] or ""))


def _failure(what: str, exc: BaseException) -> str:
    return f"{what}: {aws.error_code(exc) or type(exc).__name__}: {exc}"[:500]


async def _sweep_place(region: str, role_arn: str | None, out: JanitorOutput) -> None:
    """One place; a resource that cannot be removed is reported and the sweep goes on."""
    resources = await asyncio.to_thread(workers.sessions_with_resources, region, role_arn)
    # session secrets live in the backup account only (workers.put_secret)
    secrets = await asyncio.to_thread(_session_secrets, region) if role_arn is None else {}
    for session_id in sorted(set(resources) | set(secrets)):
        out.sessions_checked += 1
        activity.heartbeat(session_id)
        try:
            if await _session_open(session_id):
                continue
            released = await asyncio.to_thread(
                workers.release, session_id, region, role_arn, secrets.get(session_id)
            )
        except Exception as exc:
            out.failures.append(_failure(f"session {session_id} in {region}", exc))
            continue
        out.instances_terminated += released.instances_terminated
        out.volumes_deleted += released.volumes_deleted
        if session_id in secrets:
            out.secrets_deleted.append(secrets[session_id])
    # Restores: a finished one leaves nothing temporary; one that ended otherwise
    # (terminated, failed without cleanup) leaves nothing at all.
    for restore_id in sorted(await asyncio.to_thread(_restore_ids, region, role_arn)):
        activity.heartbeat(restore_id)
        try:
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
        except Exception as exc:
            out.failures.append(_failure(f"restore {restore_id} in {region}", exc))
            continue
        out.instances_terminated += cleaned.instances_terminated
        out.volumes_deleted += cleaned.volumes_deleted


async def _sweep_checkpoints(out: JanitorOutput) -> None:
    """Checkpoints in every repository the installation writes whose workflow is no longer
    running: a terminated session runs no release, and its checkpoints would pin their data
    (prune keeps what checkpoints reference) forever."""
    try:
        urls = await asyncio.to_thread(installation.known_repositories)
    except Exception as exc:
        out.failures.append(_failure("repositories not read", exc))
        return
    for url in urls:
        activity.heartbeat(url)
        try:
            password = await asyncio.to_thread(repository_password, url)
            owners = await asyncio.to_thread(imagebackup.checkpoint_owners, url, password)
            # one status per workflow (a session has a checkpoint per volume)
            running = {
                wid
                for wid in set(owners.values())
                if await _status(wid) == WorkflowExecutionStatus.RUNNING
            }
            closed = sorted(name for name, wid in owners.items() if wid not in running)
            if closed:
                out.checkpoints_deleted += await asyncio.to_thread(
                    imagebackup.delete_checkpoints, url, password, closed
                )
        except Exception as exc:
            out.failures.append(_failure(f"checkpoints in {url}", exc))
            continue
        out.repositories_swept += 1


# The budgets with holders: every RateBudget that is running (it ends when nobody holds a share).
RUNNING_BUDGETS = "WorkflowType = 'RateBudget' AND ExecutionStatus = 'Running'"


async def _sweep_budgets(out: JanitorOutput) -> None:
    """Shares of budgets held by workflows that are no longer running: a terminated session
    gives nothing back, and its share would shrink everyone else's until its lease ran out
    (30 minutes for a rate, hours for copy slots)."""
    client = activity.client()
    try:
        budgets = [b.id async for b in client.list_workflows(RUNNING_BUDGETS)]
    except RPCError as exc:
        out.failures.append(_failure("budgets not listed", exc))
        return
    for budget_wid in budgets:
        activity.heartbeat(budget_wid)
        handle = client.get_workflow_handle(budget_wid)
        try:
            state = await handle.query("state", BudgetStateInput(), result_type=BudgetState)
            for holder in sorted(state.shares):
                if await _status(holder) == WorkflowExecutionStatus.RUNNING:
                    continue
                released = await handle.execute_update(
                    "release", ReleaseBudgetInput(holder=holder), result_type=ReleaseBudgetOutput
                )
                out.budget_shares_released += released.released
        except (RPCError, WorkflowUpdateFailedError) as exc:  # it ended meanwhile, or Temporal
            # is busy: the next sweep tries again
            out.failures.append(_failure(f"budget {budget_wid}", exc))


@activity.defn(name="janitor_sweep")
async def janitor_sweep(req: JanitorInput) -> JanitorOutput:
    """Sweep every place; what fails is listed in `failures` (the sweep does not stop there)
    and retried by the next scheduled run."""
    out = JanitorOutput()
    with role_session():
        places = _places(req, out)
        for region, role_arn in places:
            try:
                await _sweep_place(region, role_arn, out)
            except Exception as exc:  # the place itself cannot be listed
                out.failures.append(_failure(f"{region} {role_arn or 'backup account'}", exc))
        out.places_swept = len(places)
        if req.known_places:
            await _sweep_checkpoints(out)
        await _sweep_budgets(out)
    return out

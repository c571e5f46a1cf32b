"""Authorization in the workflows and outcomes an operator can alert on (issue 16).

- A policy run in which one of two instances fails: Outcome=partial (found by the search
  attributes Outcome, Region and AccountId), `ec2backup status` exits 1 naming the policy, and
  an SQS queue subscribed to the policy's SNS topic receives the run's summary.
- Started directly on Temporal (as any client of the namespace can): a `Restore` into an
  account the installation configuration does not list, a `Retention` with a future `now`,
  and a `BackupSession` with an outside `carry` fail at once with one line, having run no
  activity but the authorization check; the dry run of that retention still works.

Lean on purpose: snapshot-only sessions of 1 GiB instances, one policy run for the module.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from session_helpers import (
    ACCOUNT_A,
    REGION,
    Workbench,
    sns_messages,
    subscribed_queue,
    wait_for,
)
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ActivityError, ApplicationError

from ec2backup.models.policy import RetentionInput
from ec2backup.models.restore import RestoreInput
from ec2backup.models.session import BackupSessionInput, SessionCarry
from ec2backup.policy import load_policy
from ec2backup.temporal import TASK_QUEUE

# An account no configuration of the lab names (the lab's are 123456789012 and 222...444).
FOREIGN_ROLE = "arn:aws:iam::555555555555:role/ec2backup"

POLICY = """\
name: {name}
concurrency: 2
selection:
  instance_ids: [{first}, {second}]
  regions: [{region}]
schedule:
  daily: ["02:00"]
snapshots:
  retention: {{count: 1}}
notify:
  sns_topic_arn: {topic}
"""


def _run_failing(wb: Workbench, start: Any) -> tuple[str, ApplicationError, list[str]]:
    """Start a workflow (`start(client, id)`), expect it to fail: its id, the root
    ApplicationError and the activities it scheduled."""
    workflow_id = f"authz-{uuid.uuid4().hex[:12]}"

    async def go(client: Any) -> tuple[ApplicationError, list[str]]:
        with pytest.raises(WorkflowFailureError) as failed:
            await start(client, workflow_id)
        cause = failed.value.cause
        while isinstance(cause, ActivityError):  # refused by the authorization activity
            cause = cause.cause
        assert isinstance(cause, ApplicationError), repr(cause)
        history = await client.get_workflow_handle(workflow_id).fetch_history()
        scheduled = [
            e.activity_task_scheduled_event_attributes.activity_type.name
            for e in history.events
            if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        ]
        return cause, scheduled

    cause, scheduled = wb.temporal(go)
    return workflow_id, cause, scheduled


def _outcome_of(wb: Workbench, workflow_id: str) -> str | None:
    async def go(client: Any) -> str | None:
        query = f"WorkflowId = '{workflow_id}' AND Outcome = 'failed'"
        found = [wf.id async for wf in client.list_workflows(query)]
        return "failed" if found else None

    return wait_for(lambda: wb.temporal(go), 20, f"Outcome of {workflow_id}", interval=0.5)


@pytest.fixture(scope="module")
def partial_run(wb: Workbench, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One policy run over two instances whose first snapshot call fails (a lab fault)."""
    name = f"authz-{uuid.uuid4().hex[:6]}"
    first = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")["instance_id"]
    second = wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.01")["instance_id"]
    topic, queue_url = subscribed_queue(wb, f"{name}-runs")
    path = tmp_path_factory.mktemp("authz") / "policy.yaml"
    path.write_text(
        POLICY.format(name=name, first=first, second=second, region=REGION, topic=topic)
    )
    wb.cli("policy", "apply", str(path))
    # Not retried (an authorization error): exactly one of the two sessions fails.
    wb.cli("lab", "fault", "--api", "CreateSnapshots", "--error", "UnauthorizedOperation",
           "--times", "1")  # fmt: skip
    try:
        wb.cli("policy", "run", name)
        wait_for(lambda: wb.workflow_ids("BackupPolicy", name) or None, 30, "the run", 0.5)
        run_id = wb.workflow_ids("BackupPolicy", name)[0]
        assert wb.wait_status(run_id, timeout=240) == "COMPLETED", wb.diagnose(run_id)
    finally:
        wb.cli("lab", "fault", "--clear")

    async def result(client: Any) -> dict[str, Any]:
        return dict(await client.get_workflow_handle(run_id).result())

    return {
        "name": name,
        "policy_file": path,
        "run_id": run_id,
        "result": wb.temporal(result),
        "queue_url": queue_url,
        "instances": [first, second],
    }


def test_partial_run_is_found_by_outcome_fails_status_and_notifies(
    wb: Workbench, partial_run: dict[str, Any]
) -> None:
    name, run_id, result = partial_run["name"], partial_run["run_id"], partial_run["result"]
    assert sorted(o["status"] for o in result["instances"]) == ["completed", "failed"], result
    assert result["outcome"] == "partial"

    # Visibility: the run by its outcome, Region and account (KeywordList: '=' matches one).
    async def by_outcome(client: Any) -> list[str] | None:
        query = (
            f"WorkflowType = 'BackupPolicy' AND PolicyName = '{name}' AND Outcome = 'partial' "
            f"AND Region = '{REGION}' AND AccountId = '{ACCOUNT_A}'"
        )
        return [wf.id async for wf in client.list_workflows(query)] or None

    assert wait_for(lambda: wb.temporal(by_outcome), 20, "Outcome=partial") == [run_id]

    status = wb.cli("status", check=False)
    assert status.returncode == 1, status.stdout + status.stderr
    assert f"policy {name}: last run {run_id} failed (1 of 2)" in status.stderr.splitlines()
    assert name in status.stdout  # the table is still printed

    # One SNS message with the summary, delivered to the subscribed queue.
    (envelope,) = sns_messages(wb, partial_run["queue_url"])
    assert envelope["Subject"] == f"ec2backup policy {name}: partial (1 of 2 instances failed)"
    assert envelope["MessageAttributes"]["outcome"]["Value"] == "partial"
    summary = json.loads(envelope["Message"])
    assert summary["run_id"] == run_id and summary["outcome"] == "partial"
    assert summary["instances_total"] == 2 and summary["instances_failed"] == 1
    by_id = {i["instance_id"]: i for i in summary["instances"]}
    assert sorted(by_id) == sorted(partial_run["instances"])
    (failed,) = [i for i in by_id.values() if i["status"] == "failed"]
    assert "UnauthorizedOperation" in failed["error"], failed
    (ok,) = [i for i in by_id.values() if i["status"] == "completed"]
    assert ok["restore_point_id"], ok


def test_restore_to_an_unlisted_account_fails_at_once(
    wb: Workbench, partial_run: dict[str, Any]
) -> None:
    (ok,) = [o for o in partial_run["result"]["instances"] if o["status"] == "completed"]
    set_id = ok["snapshot_set_id"]
    ec2 = wb.client("ec2")
    snapshot_ids = [
        s["SnapshotId"]
        for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
        if any(t["Key"] == "ec2backup:session" and t["Value"] == ok["session_id"]
               for t in s.get("Tags", []))
    ]  # fmt: skip
    assert snapshot_ids
    req = RestoreInput(
        kind="instance", restore_point_id=set_id, region=REGION, to_account_role_arn=FOREIGN_ROLE
    )

    async def start(client: Any, workflow_id: str) -> Any:
        return await client.execute_workflow("Restore", req, id=workflow_id, task_queue=TASK_QUEUE)

    workflow_id, cause, scheduled = _run_failing(wb, start)
    assert cause.type == "NotAuthorized" and cause.non_retryable
    assert cause.message == (
        f"Restore: role {FOREIGN_ROLE} is not in the installation configuration "
        "([[accounts]] role_arn)"
    )
    assert "\n" not in cause.message
    assert scheduled == ["authorize_request"]  # no plan: nothing shared, copied or created
    for sid in snapshot_ids:
        shared = ec2.describe_snapshot_attribute(
            SnapshotId=sid, Attribute="createVolumePermission"
        )["CreateVolumePermissions"]
        assert shared == [], (sid, shared)
    assert _outcome_of(wb, workflow_id) == "failed"


def test_retention_refuses_a_future_now_unless_dry_run(
    wb: Workbench, partial_run: dict[str, Any]
) -> None:
    (ok,) = [o for o in partial_run["result"]["instances"] if o["status"] == "completed"]
    older = ok["snapshot_set_id"]
    # A second set of the instance in the policy: retention (count 1) would delete the older
    # one (the policy run's) once run.
    wb.run_session(
        BackupSessionInput(
            instance_id=ok["instance_id"], region=REGION, policy_name=partial_run["name"]
        )
    )
    policy = load_policy(Path(partial_run["policy_file"]))
    future = dt.datetime.now(dt.UTC) + dt.timedelta(days=400)

    async def start(client: Any, workflow_id: str) -> Any:
        return await client.execute_workflow(
            "Retention", RetentionInput(policy=policy, now=future), id=workflow_id,
            task_queue=TASK_QUEUE,
        )  # fmt: skip

    workflow_id, cause, scheduled = _run_failing(wb, start)
    assert cause.type == "FutureNow" and cause.non_retryable, cause
    assert "is in the future; only a dry run may look ahead" in cause.message
    assert "\n" not in cause.message and scheduled == []
    assert _outcome_of(wb, workflow_id) == "failed"
    # the same through the CLI: one line, exit non-zero, nothing deleted
    path = str(partial_run["policy_file"])
    refused = wb.cli("policy", "retention", path, "--now", future.isoformat(), check=False)
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1, refused
    dry = wb.cli_json(
        "policy", "retention", path, "--now", future.isoformat(), "--dry-run", "--json"
    )
    assert dry["dry_run"] is True and older in dry["deleted_snapshot_sets"], dry
    listed = wb.cli_json("snapshots", "list", "--instance", ok["instance_id"], "--json")
    assert older in {e["set_id"] for e in listed["restore_points"]}, listed  # still there


def test_carry_from_an_outside_start_is_refused(wb: Workbench) -> None:
    req = BackupSessionInput(
        instance_id="i-0123456789abcdef0", region=REGION, carry=SessionCarry(workers_provisioned=3)
    )

    async def start(client: Any, workflow_id: str) -> Any:
        return await client.execute_workflow(
            "BackupSession", req, id=workflow_id, task_queue=TASK_QUEUE
        )

    _, cause, scheduled = _run_failing(wb, start)
    assert cause.type == "InvalidInput" and cause.non_retryable
    assert "carry is internal continue-as-new state" in cause.message
    assert scheduled == []

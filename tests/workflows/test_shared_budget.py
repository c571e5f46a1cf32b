"""One GetSnapshotBlock budget per account and Region shared by every session (issue 18,
ec2backup.budget): four sessions reading with EBS direct at once, under a lab account quota of
200 GetSnapshotBlock/s that the installation's configuration also names, all complete; the
lab's counters show the peak rate held under the quota with (next to) no throttled request,
where four sessions each asking for 500/s would have been throttled most of the time."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

from session_helpers import ACCOUNT_A, OTHER_REGION, REGION, Workbench
from temporalio.client import WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy

from ec2backup.budget import GET_SNAPSHOT_BLOCK, budget_id, paced_quota
from ec2backup.models.budget import (
    AcquireBudgetInput,
    BudgetInput,
    BudgetLease,
    BudgetState,
    BudgetStateInput,
)
from ec2backup.temporal import TASK_QUEUE

QUOTA = 200
# Snapshot copies in progress at once to one destination (AWS: 20), for the lab and for the
# installation's configuration alike.
COPY_SLOTS = 2
ORCHESTRATOR_ENV: dict[str, str | None] = {
    "EC2BACKUP_PERFORMANCE__EBS_GET_BLOCK_RPS_ACCOUNT": str(QUOTA),
    "EC2BACKUP_PERFORMANCE__COPY_SNAPSHOT_CONCURRENCY": str(COPY_SLOTS),
}
REPLICA_REGION = "us-west-2"


@contextlib.contextmanager
def copies_limited(wb: Workbench) -> Iterator[None]:
    """The lab allows COPY_SLOTS snapshot copies in progress per destination (as configured),
    each pending a few seconds; its metrics start from zero."""
    saved = wb.lab_call("GET", "config")
    keys = ("copy_snapshot_concurrency", "snapshot_pending_seconds")
    wb.lab_call("POST", "config", dict(zip(keys, (COPY_SLOTS, 3), strict=True)))
    try:
        wb.lab_call("POST", "metrics", {"reset": True})
        yield
    finally:
        wb.lab_call("POST", "config", {k: saved[k] for k in keys})


def _ebs_direct(wb: Workbench) -> dict[str, Any]:
    return dict(wb.metrics()["ebs_direct"]["GetSnapshotBlock"])


def test_four_sessions_share_the_accounts_quota(wb: Workbench) -> None:
    instances = [
        wb.seed("--volumes", "1", "--size-gib", "1", "--fill", "0.25", "--seed", str(90 + n))
        for n in range(4)
    ]
    repo = wb.new_repo()
    wb.lab_call("POST", "config", {"ebs_get_block_rps_account": QUOTA})
    try:
        wb.lab_call("POST", "metrics", {"reset": True})
        sessions = [
            wb.start_backup(i["instance_id"], "--repo", repo, "--read", "ebs-direct")
            for i in instances
        ]
        results = [wb.session_result(s, timeout=600) for s in sessions]
        counted = _ebs_direct(wb)
    finally:
        wb.lab_call("POST", "config", {"ebs_get_block_rps_account": 0})
    for session_id, result in zip(sessions, results, strict=True):
        assert result["status"] == "completed", (session_id, result)
    read = sum(v["blocks_read"] for r in results for v in r["volumes"])
    print(f"GetSnapshotBlock: {counted}; blocks read {read}")
    assert counted["requests"] >= read > 4 * 400
    assert counted["peak_rps_account"] <= QUOTA
    # Paced to their shares, the sessions stay under the quota: a throttled request is rare
    # (measured: 0 of 2,048; unpaced, 46 of 2,094 here, where the lab itself is slow; before a
    # newcomer waited for what the others might still spend, 25 of 2,073 on a loaded CI).
    assert counted["throttled"] <= 0.005 * counted["requests"], counted

    # Every session gave its share back when its reads were over.
    async def state(client: Any) -> BudgetState:
        handle = client.get_workflow_handle(budget_id(ACCOUNT_A, REGION, "GetSnapshotBlock"))
        out: BudgetState = await handle.query("state", BudgetStateInput(), result_type=BudgetState)
        return out

    # (Sessions of other modules that were terminated mid-read may still hold theirs until
    # their lease runs out: the lab's Temporal serves the whole test run.)
    left = wb.temporal(state)
    assert left.quota_rps == QUOTA and not set(sessions) & set(left.shares), left


def test_replications_share_the_destinations_copy_slots(wb: Workbench) -> None:
    """Three snapshot-only sessions replicate their three volumes each to one Region at once, where
    only two copies may be in progress (lab and configuration): each gets its share of the
    slots, so every copy is asked for exactly once (none refused with ResourceLimitExceeded)
    and all complete; the lab never saw more than two copies in progress."""
    instances = [
        wb.seed("--volumes", "2", "--size-gib", "1", "--fill", "0.01", "--seed", str(60 + n))
        for n in range(3)
    ]
    with copies_limited(wb):
        sessions = [
            wb.start_backup(i["instance_id"], "--replicate-to", REPLICA_REGION) for i in instances
        ]
        results = [wb.session_result(s, timeout=300) for s in sessions]
        metrics = wb.metrics()
    for session_id, result in zip(sessions, results, strict=True):
        assert result["status"] == "completed", (session_id, result)
        assert len(result["replica_ids"]) == len(result["snapshot_ids"]) == 3, result
    copies = sum(len(r["replica_ids"]) for r in results)
    print(f"copies {copies}; CopySnapshot calls {metrics['api_calls'].get('CopySnapshot')}; "
          f"peak in progress {metrics['copies_in_progress_peak']}")  # fmt: skip
    assert metrics["api_calls"].get("CopySnapshot") == copies, metrics["api_calls"]
    peak = metrics["copies_in_progress_peak"]
    assert peak.get(f"{ACCOUNT_A}/{REPLICA_REGION}", 0) <= COPY_SLOTS, peak


def test_a_newcomer_waits_for_what_the_others_may_still_spend(wb: Workbench) -> None:
    """The RateBudget workflow itself (ec2backup.budget.spendable): a holder alone gets the
    whole (paced) quota; a second one, asking while the first may still spend it (it follows within
    `follow_seconds`), gets nothing at first, then its fair share once the first had the time
    to slow down; the two never add up to more than the quota."""
    follow = 3.0
    paced = paced_quota(GET_SNAPSHOT_BLOCK, QUOTA)  # a little under the quota: jitter
    workflow_id = budget_id(f"9{uuid.uuid4().int % 10**11:011d}", REGION, GET_SNAPSHOT_BLOCK)

    async def run(client: Any) -> list[dict[str, float]]:
        async def acquire(holder: str) -> BudgetLease:
            start: WithStartWorkflowOperation[Any, None] = WithStartWorkflowOperation(
                "RateBudget",
                BudgetInput(account="x", region=REGION, api=GET_SNAPSHOT_BLOCK, quota_rps=QUOTA),
                id=workflow_id,
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                task_queue=TASK_QUEUE,
            )
            lease: BudgetLease = await client.execute_update_with_start_workflow(
                "acquire",
                AcquireBudgetInput(
                    holder=holder,
                    want_rps=500,
                    ttl_seconds=600,
                    quota_rps=QUOTA,
                    follow_seconds=follow,
                ),
                start_workflow_operation=start,
                result_type=BudgetLease,
            )
            return lease

        handle = client.get_workflow_handle(workflow_id)
        assert (await acquire("a")).rps == paced
        came = time.monotonic()
        assert (await acquire("b")).rps == 0
        seen: list[dict[str, float]] = []
        while time.monotonic() - came < follow + 15:
            state = await handle.query("state", BudgetStateInput(), result_type=BudgetState)
            seen.append(dict(state.shares))
            if state.shares["b"] > 0:
                assert time.monotonic() - came >= follow - 0.5, seen
                break
            await asyncio.sleep(0.2)
        await handle.terminate("test over")
        return seen

    seen = wb.temporal(run)
    assert seen[0] == {"a": paced / 2, "b": 0}, seen
    assert seen[-1] == {"a": paced / 2, "b": paced / 2}, seen


def test_restores_copying_into_another_region_share_the_copy_slots(wb: Workbench) -> None:
    """Three restores of snapshot sets (a root and two data volumes each) into a Region
    without replicas, at once, where only two copies may be in progress (lab and
    configuration): each restore plans, takes its share of the destination's copy slots (the
    sessions' replications' budget), then copies; every copy is asked for exactly once (12 of
    21 calls were refused before restores took slots) and all three complete."""
    from ec2backup.models.restore import RestoreOutput

    instances = [
        wb.seed("--volumes", "2", "--size-gib", "1", "--fill", "0.01", "--seed", str(70 + n))
        for n in range(3)
    ]
    sets = [wb.backup(i["instance_id"]).result for i in instances]
    with copies_limited(wb):
        restores = [
            wb.cli("restore", "instance", s["snapshot_set_id"], "--to-region", OTHER_REGION)
            .stdout.splitlines()[0]
            .strip()
            for s in sets
            if s is not None
        ]

        async def results(client: Any) -> list[RestoreOutput]:
            handles = [client.get_workflow_handle(r, result_type=RestoreOutput) for r in restores]
            return list(await asyncio.wait_for(asyncio.gather(*(h.result() for h in handles)), 300))

        outs = wb.temporal(results)
        metrics = wb.metrics()
    assert len(restores) == 3
    for restore_id, out in zip(restores, outs, strict=True):
        assert out.status == "completed" and out.region == OTHER_REGION, (restore_id, out)
    print(f"CopySnapshot calls {metrics['api_calls'].get('CopySnapshot')}; "
          f"peak in progress {metrics['copies_in_progress_peak']}")  # fmt: skip
    copies = sum(len(s["snapshot_ids"]) for s in sets if s is not None)  # root + 2 each
    assert metrics["api_calls"].get("CopySnapshot") == copies == 9, metrics["api_calls"]
    peak = metrics["copies_in_progress_peak"]
    assert peak.get(f"{ACCOUNT_A}/{OTHER_REGION}", 0) <= COPY_SLOTS, peak

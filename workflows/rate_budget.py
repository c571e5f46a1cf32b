"""`RateBudget`: one account's request budget for one API in one Region, split between the
sessions that read (ec2backup.budget). Started by the first `acquire_budget` (update-with-
start, id `budget_id`), it lives while someone holds a share and a while after, then ends; the
next acquire starts it again."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ec2backup.budget import shares, slot_grant
    from ec2backup.models.budget import (
        AcquireBudgetInput,
        BudgetHolder,
        BudgetInput,
        BudgetLease,
        BudgetState,
        BudgetStateInput,
        ReleaseBudgetInput,
        ReleaseBudgetOutput,
    )

# With nobody holding a share for this long, the workflow ends (a new acquire restarts it).
IDLE_END = timedelta(minutes=10)
# A holder of a slot budget that got nothing asks again within this (else it is gone).
WAITER_TTL = timedelta(minutes=2)


@workflow.defn(name="RateBudget")
class RateBudget:
    @workflow.init
    def __init__(self, req: BudgetInput) -> None:
        # Set before any handler runs: the first acquire arrives with the start itself.
        self._state = req
        self._changed = False

    def _prune(self) -> None:
        assert self._state is not None
        now = workflow.now()
        self._state.holders = {h: v for h, v in self._state.holders.items() if v.expires > now}

    def _shares(self) -> dict[str, float]:
        assert self._state is not None
        wants = {h: v.want_rps for h, v in self._state.holders.items()}
        return shares(self._state.quota_rps, wants)

    @workflow.run
    async def run(self, req: BudgetInput) -> None:
        assert self._state is not None
        while True:
            self._changed = False
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=IDLE_END)
            except TimeoutError:
                self._prune()
                if not self._state.holders:
                    return
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state)

    @workflow.update(name="acquire")
    def acquire(self, req: AcquireBudgetInput) -> BudgetLease:
        assert self._state is not None
        self._prune()
        self._state.quota_rps = req.quota_rps  # the configuration as the orchestrator reads it
        holder = BudgetHolder(
            want_rps=req.want_rps,
            expires=workflow.now() + timedelta(seconds=req.ttl_seconds),
        )
        self._state.holders[req.holder] = holder
        self._changed = True
        if req.slots:
            others = sum(v.granted for h, v in self._state.holders.items() if h != req.holder)
            holder.granted = slot_grant(
                req.quota_rps, req.want_rps, others, len(self._state.holders)
            )
            if not holder.granted:  # it asks again soon; one that went away stops counting
                holder.expires = min(holder.expires, workflow.now() + WAITER_TTL)
            return BudgetLease(
                rps=holder.granted,
                quota_rps=self._state.quota_rps,
                holders=len(self._state.holders),
            )
        return BudgetLease(
            rps=self._shares()[req.holder],
            quota_rps=self._state.quota_rps,
            holders=len(self._state.holders),
        )

    @workflow.update(name="release")
    def release(self, req: ReleaseBudgetInput) -> ReleaseBudgetOutput:
        assert self._state is not None
        released = self._state.holders.pop(req.holder, None) is not None
        self._changed = True
        return ReleaseBudgetOutput(released=released)

    @workflow.query(name="state")
    def state(self, req: BudgetStateInput | None = None) -> BudgetState:
        assert self._state is not None
        return BudgetState(quota_rps=self._state.quota_rps, shares=self._shares())

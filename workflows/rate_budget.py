"""`RateBudget`: one account's request budget for one API in one Region, split between the
sessions that read (ec2backup.budget). Started by the first `acquire_budget` (update-with-
start, id `budget_id`), it lives while someone holds a share and a while after, then ends; the
next acquire starts it again."""

from __future__ import annotations

from datetime import datetime, timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from ec2backup.budget import paced_quota, shares, slot_grant, spendable
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
# Wake when a held (older, larger) share may no longer be spent, so a waiting newcomer's
# share grows then, not at the next acquire (queries see the time of the last workflow task).
HELD_WAKE_PATCH = "rate-budget-held-v1"


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
        return shares(self._quota(), wants)

    def _quota(self) -> float:
        assert self._state is not None
        return paced_quota(self._state.api, self._state.quota_rps)

    def _held(self) -> dict[str, float]:
        """The older, larger shares holders may still be spending now."""
        assert self._state is not None
        now = workflow.now()
        return {
            h: v.held_rps
            for h, v in self._state.holders.items()
            if v.held_until is not None and v.held_until > now
        }

    def _spendable(self) -> dict[str, float]:
        """Each holder's share now: its fair share, less what followers may still spend of
        theirs (ec2backup.budget.spendable); a holder that does not follow gets its fair share."""
        assert self._state is not None
        fair, held = self._shares(), self._held()
        return {
            h: spendable(self._quota(), fair, held, h) if v.follow_seconds else fair[h]
            for h, v in self._state.holders.items()
        }

    def _note_falls(self, before: dict[str, float]) -> None:
        """Holders that follow and whose share just fell may spend the old one a while yet."""
        assert self._state is not None
        now, after = workflow.now(), self._shares()
        for h, v in self._state.holders.items():
            if v.follow_seconds and before.get(h, 0.0) > after[h]:
                still = v.held_rps if v.held_until is not None and v.held_until > now else 0.0
                v.held_rps = max(before[h], still)
                v.held_until = now + timedelta(seconds=v.follow_seconds)

    def _next_unhold(self) -> datetime | None:
        assert self._state is not None
        now = workflow.now()
        ends = [
            v.held_until
            for v in self._state.holders.values()
            if v.held_until is not None and v.held_until > now
        ]
        return min(ends) if ends else None

    @workflow.run
    async def run(self, req: BudgetInput) -> None:
        assert self._state is not None
        while True:
            self._changed = False
            timeout, idle = IDLE_END, True
            unhold = self._next_unhold()
            if unhold is not None and workflow.patched(HELD_WAKE_PATCH):
                timeout, idle = min(IDLE_END, unhold - workflow.now()), False
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=timeout)
            except TimeoutError:
                self._prune()
                if idle and not self._state.holders:
                    return
            if workflow.info().is_continue_as_new_suggested():
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state)

    @workflow.update(name="acquire")
    def acquire(self, req: AcquireBudgetInput) -> BudgetLease:
        assert self._state is not None
        self._prune()
        before = self._shares()
        self._state.quota_rps = req.quota_rps  # the configuration as the orchestrator reads it
        old = self._state.holders.get(req.holder)
        holder = BudgetHolder(
            want_rps=req.want_rps,
            expires=workflow.now() + timedelta(seconds=req.ttl_seconds),
            follow_seconds=req.follow_seconds,
        )
        if old is not None:  # a renewal: what it may still spend stays counted
            holder.held_rps, holder.held_until = old.held_rps, old.held_until
        self._state.holders[req.holder] = holder
        self._note_falls(before)
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
            rps=self._spendable()[req.holder],
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
        return BudgetState(quota_rps=self._state.quota_rps, shares=self._spendable())

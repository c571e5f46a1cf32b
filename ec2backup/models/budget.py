"""RateBudget: the account-wide request budget shared by every session (ec2backup.budget)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class BudgetHolder(BaseModel):
    want_rps: float
    expires: datetime  # dropped unless renewed by then (a session that died without releasing)
    granted: float = 0.0  # slot budgets: what this holder was given and may be using
    # Rate budgets whose holder follows its share (polls it): how long it may lag behind a
    # fall of its share, and the older, larger share it may still be spending until when.
    follow_seconds: float = 0.0
    held_rps: float = 0.0
    held_until: datetime | None = None


class BudgetInput(BaseModel):
    """The workflow's start (and its continue-as-new): the quota, and who holds a share."""

    account: str
    region: str
    api: str
    quota_rps: float
    holders: dict[str, BudgetHolder] = Field(default_factory=dict)


class AcquireBudgetInput(BaseModel):
    holder: str  # a session id
    want_rps: float
    ttl_seconds: float
    quota_rps: float  # the account's quota as configured now
    # A budget of slots (things in progress at once), not of a rate: a grant never lends what
    # another holder was granted and may still be using (ec2backup.budget.slot_grant).
    slots: bool = False
    # The holder asks for its share again within this (0: it does not, it keeps what it was
    # given until it acquires again): a newcomer is then never lent what it may still spend.
    follow_seconds: float = 0.0


class BudgetLease(BaseModel):
    rps: float  # this holder's share now (CopySnapshot: copies in progress at once)
    quota_rps: float
    holders: int
    account: str = ""  # the account the budget is of (resolved when the request named a role)


class ReleaseBudgetInput(BaseModel):
    holder: str


class ReleaseBudgetOutput(BaseModel):
    released: bool


class BudgetState(BaseModel):
    quota_rps: float
    shares: dict[str, float]


class BudgetStateInput(BaseModel):
    pass


# ---- the orchestrator's activities ---------------------------------------------------------
class BudgetRequest(BaseModel):
    """acquire_budget: a share of one API's budget in one account and Region."""

    account: str  # "": the account of `account_role_arn` (or the orchestrator's own)
    region: str
    api: str
    holder: str
    want_rps: float
    account_role_arn: str | None = None
    follow_seconds: float = 0.0  # see AcquireBudgetInput


class BudgetReleaseRequest(BaseModel):
    account: str
    region: str
    api: str
    holder: str

"""The authorization check every workflow runs first (`ec2backup.authorization`), and the
outcome search attribute's values."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

# A run's outcome (search attribute `Outcome`): partial = some of a policy run's instances (or
# archive copies) failed, not all.
Outcome = Literal["succeeded", "partial", "failed"]


class AuthorizeInput(BaseModel):
    workflow: str  # who asks (named in the refusal)
    regions: list[str] = Field(default_factory=list)
    role_arns: list[str] = Field(default_factory=list)  # roles to assume (none: backup account)
    account_ids: list[str] = Field(default_factory=list)  # accounts named by id (an SNS topic's)
    repositories: list[str] = Field(default_factory=list)


class AuthorizeOutput(BaseModel):
    enforced: bool  # false: the configuration names no Region, account or repository
    regions: list[str]
    account_ids: list[str]  # the backup account and every account asked for

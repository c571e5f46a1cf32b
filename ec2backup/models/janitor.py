"""Janitor: the sweep of what terminated sessions and restores left behind."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ec2backup.models.session import SessionCarry


def _backup_account_only() -> list[str | None]:
    return [None]


class JanitorInput(BaseModel):
    regions: list[str] = Field(default_factory=lambda: ["us-east-1"])
    role_arns: list[str | None] = Field(default_factory=_backup_account_only)
    # Also every place the installation remembers (snapshot sets, replicas, restore targets),
    # with the backup account in each of their Regions.
    known_places: bool = True


class JanitorOutput(BaseModel):
    instances_terminated: list[str] = Field(default_factory=list)
    volumes_deleted: list[str] = Field(default_factory=list)
    secrets_deleted: list[str] = Field(default_factory=list)
    # checkpoints of closed (terminated, forgotten) sessions and archive copies, per repository
    checkpoints_deleted: int = 0
    repositories_swept: int = 0
    sessions_checked: int = 0
    # shares of RateBudget workflows whose holder was no longer running, given back
    budget_shares_released: int = 0
    places_swept: int = 0
    # What could not be removed (or a place that could not be listed), one line each: the
    # sweep goes on past them, the next run tries again.
    failures: list[str] = Field(default_factory=list)


SessionCarry.model_rebuild()

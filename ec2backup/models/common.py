"""Models shared by several workflow families: the pause/resume signals."""

from __future__ import annotations

from pydantic import BaseModel


class PauseInput(BaseModel):
    reason: str = ""


class ResumeInput(BaseModel):
    pass

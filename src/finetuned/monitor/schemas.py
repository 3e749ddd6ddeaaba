"""Response bodies of the endpoints that change something; readers return the files' own shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

ControlAction = Literal["pause", "resume", "stop", "skip"]
QueuePriority = Literal["normal", "high"]


class ControlResult(BaseModel):
    ok: bool
    action: ControlAction
    message: str
    paused: bool


class ActionResult(BaseModel):
    ok: bool
    action: Literal["cancel", "front"]
    job_id: str
    message: str


class UploadResult(BaseModel):
    ok: bool
    file: str
    folder: str
    bytes: int
    message: str

"""Bodies of the endpoints that change something; readers return the files' own shapes."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, field_validator

from finetuned.asks import MAX_PROMPT_CHARS

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


class AskBody(BaseModel):
    """A question for the model line (Try it)."""

    prompt: str = Field(max_length=MAX_PROMPT_CHARS)
    system: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="a system prompt (default: the "
                                                                              "template's own)")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the question is empty")
        return value

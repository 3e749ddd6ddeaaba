"""A job is one dropped file; its record is the single source of truth for where it is.

States are exactly SPEC section 2's; one transition table rejects illegal moves.
"""

from __future__ import annotations

from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel, Field

from finetuned.timestamps import now_text


class JobStatus(str, Enum):
    QUEUED = "queued"
    TRAINING = "training"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def active(self) -> bool:
        return self in (JobStatus.QUEUED, JobStatus.TRAINING, JobStatus.PAUSED)


TRANSITIONS: dict[JobStatus, set[JobStatus]] = {
    # A queued job can fail before it trains (bad data) or be cancelled (-> skipped).
    JobStatus.QUEUED: {JobStatus.TRAINING, JobStatus.FAILED, JobStatus.SKIPPED},
    JobStatus.TRAINING: {
        JobStatus.PAUSED, JobStatus.QUEUED, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.SKIPPED,
    },
    JobStatus.PAUSED: {JobStatus.TRAINING, JobStatus.QUEUED, JobStatus.SKIPPED, JobStatus.FAILED},
    JobStatus.COMPLETED: set(),
    JobStatus.FAILED: {JobStatus.QUEUED},  # `finetuned retry`
    JobStatus.SKIPPED: set(),
}

Priority = Literal["high", "normal"]


# Not a FinetunedError: a bug in whoever asked for the transition, never a user's doing.
class InvalidTransition(Exception):
    def __init__(self, job_id: str, old: JobStatus, new: JobStatus) -> None:
        super().__init__(f"job {job_id}: cannot go from {old.value} to {new.value}")


class Run(BaseModel):
    """One attempt at a job: a stopped or preempted job has several."""

    started: str
    ended: str | None = None
    from_step: int = 0
    to_step: int | None = None
    reason: str | None = None


class Event(BaseModel):
    time: str
    status: str
    reason: str = ""


class PendingMove(BaseModel):
    """Written before a file is renamed, so a crash between the two is repaired at startup."""

    src: str
    dst: str
    status: JobStatus
    reason: str = ""


class Job(BaseModel):
    id: str
    file: str  # the name as dropped
    priority: Priority = "normal"
    status: JobStatus = JobStatus.QUEUED
    order: float  # position within its priority class; smaller runs first
    added: str = Field(default_factory=now_text)
    path: str  # where the file is now, relative to the workspace root
    examples: int | None = None  # None until validated
    format: str | None = None
    sha256: str | None = None
    step: int = 0
    total_steps: int | None = None
    retries: int = 0
    reason: str = ""  # why it is in its current state, when that needs saying
    warnings: list[str] = Field(default_factory=list)  # what its data loses or trains differently (data/losses.py)
    runs: list[Run] = Field(default_factory=list)
    history: list[Event] = Field(default_factory=list)
    pending: PendingMove | None = None
    summary: dict[str, Any] = Field(default_factory=dict)
    # The file's own settings (a sidecar NAME.jsonl.config.json, or `add --set`), over the workspace's config.
    overrides: dict[str, Any] = Field(default_factory=dict)
    # Its effective settings (config.json's and its own), frozen at its first start: every later run trains
    # with them whatever config.json says by then, except the sections that stay the workspace's
    # (overrides.LIVE_SECTIONS). None until it starts, and again after `retry --fresh-config`.
    config: dict[str, Any] | None = None

    @property
    def validated(self) -> bool:
        return self.examples is not None

    def set_status(self, new: JobStatus, reason: str = "") -> None:
        if new != self.status and new not in TRANSITIONS[self.status]:
            raise InvalidTransition(self.id, self.status, new)
        self.status = new
        self.reason = reason
        self.history.append(Event(time=now_text(), status=new.value, reason=reason))

    def start_run(self) -> None:
        self.runs.append(Run(started=now_text(), from_step=self.step))

    def end_run(self, reason: str) -> None:
        if self.runs and self.runs[-1].ended is None:
            self.runs[-1].ended = now_text()
            self.runs[-1].to_step = self.step
            self.runs[-1].reason = reason

    def sort_key(self) -> tuple[int, float]:
        return (0 if self.priority == "high" else 1, self.order)

"""`control/queue.json` in the exact shape of SPEC section 3 (its model: `queue/status_files.py`)."""

from __future__ import annotations

from dataclasses import dataclass

from finetuned.overrides import flatten
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.status_files import QueueCurrent, QueueEntry, QueueFile


@dataclass
class Progress:
    """What the daemon knows about the job in the worker."""

    job_id: str
    step: int
    total: int | None
    eta_seconds: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    examples_per_second: float | None = None

    @property
    def percent(self) -> int:
        return int(100 * self.step / self.total) if self.total else 0


def human_duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    seconds = max(0, int(seconds))
    if seconds < 90:
        return f"{seconds} seconds"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} minutes"
    hours, rest = divmod(seconds, 3600)
    return f"{hours} hours {round(rest / 60)} minutes" if rest >= 60 else f"{hours} hours"


def size_text(job: Job) -> str:
    return f"{job.examples} examples" if job.examples is not None else "checking"


def queue_entry(job: Job) -> QueueEntry:
    entry = QueueEntry(id=job.id, file=job.file, priority=job.priority, size=size_text(job), added=job.added,
                       status=job.status)
    if job.overrides:
        entry.settings = flatten(job.overrides)  # the file's own, over config.json
    return entry


def queue_document(active: list[Job], current: Job | None, progress: Progress | None) -> QueueFile:
    """The running (or paused) job first, then the rest in the order they will run."""
    ordered = ([current] if current else []) + [j for j in active if current is None or j.id != current.id]
    doc = QueueFile(queue=[queue_entry(j) for j in ordered], current=None)
    if current is not None:
        step = progress.step if progress and progress.job_id == current.id else current.step
        total = progress.total if progress and progress.job_id == current.id else current.total_steps
        eta = progress.eta_seconds if progress and progress.job_id == current.id else None
        doc.current = QueueCurrent(
            id=current.id,
            progress=f"{int(100 * step / total) if total else 0}%",
            step=f"{step}/{total if total else '?'}",
            eta=human_duration(eta) if current.status == JobStatus.TRAINING else None,
            status=current.status,
        )
    return doc

"""How a run of a job ends, in one place: the record, the file's folder, the leftovers, the log, the notice.

Every ending goes through `JobStore.move`, so a job's status and its file's
location change together (and `recover()` finishes a move a crash cut). A
run ends one of these ways:

    paused       waits in the worker at its checkpoint
    requeued     back to queued: a stop behind its class, a preemption or a crash to the front
    stopped      the daemon stopped: first in line when it comes back
    skipped      file to data/skipped, its checkpoints kept for recovery, no adapter
    cancelled    a queued job taken out of the queue (file to data/skipped)
    completed    every step trained and the adapter published: file to data/completed
    failed       the file cannot train, or the loss diverged: file to data/failed + NAME.error.json
    crashed      the worker died or raised: requeued to the front, or failed after too many retries

The worker's `publish` writes the adapter's job.json with `adapter_record`, so the
record beside an adapter says what this module would.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from finetuned import checkpoints
from finetuned.fsio import remove_tree
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.store import JobStore

log = logging.getLogger("finetuned.daemon")

Notify = Callable[..., None]  # notify(event, **payload)

DAEMON_STOPPED = "daemon stopped"


def trained_reason(summary: dict[str, Any]) -> str:
    """Why a job is completed: every step trained, or stopped early (the step, and why)."""
    stopped = summary.get("early_stopped")
    if stopped:
        return f"early_stopped at step {stopped['step']}: {stopped['reason']}"
    return f"trained {summary['steps']} steps"


def adapter_record(job: Job, summary: dict[str, Any]) -> dict[str, Any]:
    """The adapter's job.json: the job's record as it ends completed, and what training says it trained.

    Where the file sits is the queue's business, not the adapter's: `path` stays out.
    """
    done = job.model_copy(deep=True)
    done.end_run("completed")
    done.step = summary["steps"]
    done.set_status(JobStatus.COMPLETED, trained_reason(summary))
    record = done.model_dump(mode="json", exclude={"pending", "summary", "path"})
    record.update(summary)
    return record


def _no_notice(_event: str, **_payload: Any) -> None:
    return None


class Endings:
    def __init__(self, store: JobStore, notify: Notify = _no_notice) -> None:
        self.store = store
        self.ws = store.ws
        self.notify = notify

    def paused(self, job: Job) -> None:
        job.end_run("paused")
        self.store.move(job, JobStatus.PAUSED, f"paused at step {job.step}")
        log.info("job %s: paused at step %d", job.id, job.step)

    def requeued(self, job: Job, reason: str, front: bool) -> None:
        """Back to queued: in front of its class (a preemption), or behind it (a stop)."""
        job.end_run(reason)
        job.order = self.store.front_order(job.priority) if front else self.store.back_order(job.priority)
        self.store.move(job, JobStatus.QUEUED, reason)
        log.info("job %s: %s; back in the queue", job.id, reason)

    def stopped(self, job: Job) -> None:
        """The daemon stops: the job keeps its place and resumes from its last checkpoint next time."""
        job.end_run(DAEMON_STOPPED)
        self.store.move(job, JobStatus.QUEUED, f"{DAEMON_STOPPED}; resumes from its last checkpoint")
        log.info("job %s: %s at step %d; it resumes from its last checkpoint", job.id, DAEMON_STOPPED, job.step)

    def skipped(self, job: Job, reason: str) -> None:
        job.end_run(reason)
        self.store.move(job, JobStatus.SKIPPED, reason)
        remove_tree(self.ws.tokenized / job.id)
        log.info("job %s: %s; file in data/skipped, checkpoints kept for recovery", job.id, reason)
        self.notify("job_skipped", job_id=job.id, file=job.file, reason=reason, step=job.step)

    def cancelled(self, job: Job) -> None:
        self.store.move(job, JobStatus.SKIPPED, "cancelled")
        log.info("job %s: cancelled; file in data/skipped", job.id)

    def completed(self, job: Job, summary: dict[str, Any]) -> None:
        job.end_run("completed")
        job.summary = summary
        job.step = summary["steps"]
        self.store.move(job, JobStatus.COMPLETED, trained_reason(summary))
        # The final checkpoint stays: the model line continues from it.
        checkpoints.prune(self.ws.job_checkpoints(job.id), 1)
        remove_tree(self.ws.tokenized / job.id)
        log.info("job %s: completed, %d steps, %d examples, loss %s -> %s; adapter in models/adapters/%s",
                 job.id, summary["steps"], summary["examples_trained"], _fmt(summary["first_loss"]),
                 _fmt(summary["final_loss"]), job.id)
        self.notify("job_completed", job_id=job.id, file=job.file, steps=summary["steps"],
                    examples=summary["examples_trained"], tokens=summary.get("tokens"),
                    first_loss=summary["first_loss"], final_loss=summary["final_loss"],
                    val_loss=summary.get("val_loss"), adapter=f"models/adapters/{job.id}")

    def failed(self, job: Job, reason: str, report: dict[str, Any] | None = None) -> None:
        """The job cannot train: its file goes to data/failed with NAME.error.json beside it."""
        body = dict(report) if report else {"error": reason, "problems": []}
        body["file"] = job.file  # the name as dropped, not the one it is kept under (data/queued/ID__NAME)
        body.setdefault("job_id", job.id)
        body.setdefault("step", job.step)
        if job.status == JobStatus.TRAINING:
            job.end_run(reason)
        self.store.move(job, JobStatus.FAILED, reason, error=body)
        remove_tree(self.ws.tokenized / job.id)
        log.error("job %s: failed: %s; file in data/failed", job.id, reason)
        self.notify("job_failed", job_id=job.id, file=job.file, reason=reason, step=job.step)

    def crashed(self, job: Job, reason: str, max_retries: int) -> None:
        """The worker died or raised: retry from the last checkpoint, at most `max_retries` times."""
        job.retries += 1
        if job.retries > max_retries:
            self.failed(job, f"{reason} (after {job.retries - 1} retries)")
            return
        job.end_run(reason)
        # The steps since its last checkpoint are lost: the job stands where it resumes, and says so.
        resume = checkpoints.latest(self.ws.job_checkpoints(job.id))
        job.step = resume[0].step if resume else 0
        where = f"{resume[1].name} (step {job.step})" if resume else "its start (no checkpoint of its own yet)"
        job.order = self.store.front_order(job.priority)
        self.store.move(job, JobStatus.QUEUED, f"{reason}; retry {job.retries} from {where}")
        log.error("job %s: %s; retrying from %s (%d/%d)", job.id, reason, where, job.retries, max_retries)


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"

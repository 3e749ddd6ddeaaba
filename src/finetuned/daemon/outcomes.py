"""What the daemon does with each report of the worker, and how a job ends.

Every ending goes through `JobStore.move`, so status and file location change
together; a finished job's record is copied into its adapter folder as
`job.json`.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from finetuned.fsio import atomic_write_json, remove_file, remove_tree
from finetuned.queue.job import Job, JobStatus
from finetuned.worker import checkpoint

if TYPE_CHECKING:
    from finetuned.daemon.daemon import Daemon

log = logging.getLogger("finetuned.daemon")


class Outcomes:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon

    @property
    def store(self):
        return self.d.store

    def handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        job = self.d.current
        if kind == "ready" or job is None or message.get("job_id") != job.id:
            return
        if kind == "phase":
            if message["phase"] == "waiting for disk space" and self.d.phase != "waiting for disk space":
                self.d.notify("paused_for_disk", job_id=job.id, step=job.step, reason=message.get("reason", ""))
            if message.get("reason") and message["reason"] != self.d.phase_reason:
                log.warning("job %s: %s", job.id, message["reason"])
            elif message["phase"] != self.d.phase:
                log.info("job %s: %s", job.id, message["phase"])
            self.d.phase, self.d.phase_reason = message["phase"], message.get("reason", "")
        elif kind == "started":
            job.total_steps, job.step = message["total_steps"], message["step"]
            self.store.save(job)
            self.d.phase = "training"
            origin = f"resuming from step {job.step}" if message["resumed_from"] else "from the start"
            log.info("job %s: %d steps over %d examples, %s", job.id, job.total_steps, message["examples"], origin)
        elif kind == "step":
            job.step = message["step"]
            self.d.record_step(message)
            every = self.d.config.training.log_every_steps
            if job.step == 1 or job.step % every == 0 or job.step == message["total_steps"]:
                log.info("job %s: step %d/%d loss %.4f", job.id, job.step, message["total_steps"], message["loss"])
        elif kind == "checkpoint":
            self.d.phase, self.d.phase_reason = "training", ""
            job.step = message["step"]
            self.store.save(job)
        elif kind == "yielded":
            self._yielded(job, message)
        elif kind == "completed":
            self.complete(job, message["summary"])
        elif kind == "failed":
            if message.get("data_error") is not None or message.get("step") is not None:
                self.fail(job, message["reason"], message.get("data_error"))
            else:
                self.crashed(job, message["reason"])

    def _yielded(self, job: Job, message: dict[str, Any]) -> None:
        reason = message["reason"]
        job.step = message["step"]
        self.d.yielding = None
        if reason == "pause":
            self.store.end_run(job, "paused")
            self.store.move(job, JobStatus.PAUSED, f"paused at step {job.step}")
            self.d.paused_since = time.time()
            self.d.phase = "paused"
            log.info("job %s: paused at step %d (checkpoint %s)", job.id, job.step, message["checkpoint"])
        elif reason == "skip":
            self.skipped(job, f"skipped at step {job.step}")
        elif reason in ("stop", "preempt"):
            self.requeued(job, reason, f"{reason} at step {job.step}")
        else:  # shutdown: first in line again when the daemon comes back
            self.store.end_run(job, "daemon stopped")
            self.store.move(job, JobStatus.QUEUED, "daemon stopped; resumes from its last checkpoint")
            self.d.clear_current()

    def requeued(self, job: Job, how: str, reason: str) -> None:
        """Back to queued: a stop goes behind its class, a preemption to the front."""
        consume_control = how == "stop"
        self.store.end_run(job, reason)
        job.order = self.store.front_order(job.priority) if how == "preempt" else self.store.back_order(job.priority)
        self.store.move(job, JobStatus.QUEUED, reason)
        log.info("job %s: %s; back in the queue", job.id, reason)
        self.d.clear_current()
        if consume_control:
            remove_file(self.d.ws.stop_file)

    def skipped(self, job: Job, reason: str) -> None:
        self.store.end_run(job, reason)
        self.store.move(job, JobStatus.SKIPPED, reason)
        log.info("job %s: %s; file in data/skipped, checkpoints kept for recovery", job.id, reason)
        remove_tree(self.d.ws.tokenized / job.id)
        self.d.clear_current()
        remove_file(self.d.ws.skip_file)
        self.d.notify("job_skipped", job_id=job.id, file=job.file, reason=reason, step=job.step)

    def complete(self, job: Job, summary: dict[str, Any]) -> None:
        self.store.end_run(job, "completed")
        job.summary = summary
        job.step = summary["steps"]
        self.store.move(job, JobStatus.COMPLETED, f"trained {summary['steps']} steps")
        atomic_write_json(self.d.ws.adapter_dir(job.id) / "job.json", job_record(job))
        # The final checkpoint stays: the model line continues from it.
        checkpoint.prune(self.d.ws.job_checkpoints(job.id), 1)
        remove_tree(self.d.ws.tokenized / job.id)
        log.info("job %s: completed, %d steps, %d examples, loss %s -> %s; adapter in models/adapters/%s",
                 job.id, summary["steps"], summary["examples_trained"], _fmt(summary["first_loss"]),
                 _fmt(summary["final_loss"]), job.id)
        self.d.clear_current()
        self.d.notify("job_completed", job_id=job.id, file=job.file, steps=summary["steps"],
                      examples=summary["examples_trained"], tokens=summary.get("tokens"),
                      first_loss=summary["first_loss"], final_loss=summary["final_loss"],
                      val_loss=summary.get("val_loss"), adapter=f"models/adapters/{job.id}")

    def fail(self, job: Job, reason: str, report: dict[str, Any] | None) -> None:
        """The job cannot train: its file goes to data/failed with NAME.error.json beside it."""
        body = dict(report) if report else {"file": job.file, "error": reason, "problems": []}
        body.setdefault("job_id", job.id)
        body.setdefault("step", job.step)
        if job.status == JobStatus.TRAINING:
            self.store.end_run(job, reason)
        self.store.move(job, JobStatus.FAILED, reason, error=body)
        remove_tree(self.d.ws.tokenized / job.id)
        log.error("job %s: failed: %s; file in data/failed", job.id, reason)
        self.d.notify("job_failed", job_id=job.id, file=job.file, reason=reason, step=job.step)
        if self.d.current is job:
            self.d.clear_current()

    def crashed(self, job: Job, reason: str) -> None:
        """The worker died or raised: retry from the last checkpoint, a limited number of times."""
        job.retries += 1
        if job.retries > self.d.config.control.max_retries:
            self.fail(job, f"{reason} (after {job.retries - 1} retries)", None)
            return
        self.store.end_run(job, reason)
        job.order = self.store.front_order(job.priority)
        self.store.move(job, JobStatus.QUEUED, f"{reason}; retry {job.retries}")
        log.error("job %s: %s; retrying from its last checkpoint (%d/%d)", job.id, reason, job.retries,
                  self.d.config.control.max_retries)
        self.d.clear_current()


def job_record(job: Job) -> dict[str, Any]:
    record = job.model_dump(mode="json", exclude={"pending", "summary"})
    record.update(job.summary)
    return record


def _fmt(value: float | None) -> str:
    return "?" if value is None else f"{value:.4f}"

"""Job records on disk (`data/jobs/JOB_ID.json`) and the files they own.

Status and location change together, in one fixed order: the record is
written with a `pending` move, the file is renamed, the record is written
again without it. `recover()` at startup finishes any move a crash cut in
half, so every dropped file ends in exactly one place.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetuned.fsio import atomic_write_json, durable_rename, read_json, unique_path
from finetuned.queue.job import Job, JobStatus, PendingMove, Priority
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

_QUEUED_NAME = re.compile(r"^(\d{8}_\d{6}(?:_\d+)?)__(.+)$")


def error_path(failed_file: Path) -> Path:
    return failed_file.with_name(failed_file.name + ".error.json")


class JobNotFound(Exception):
    pass


class JobStore:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.jobs: dict[str, Job] = {}
        self.revision = 0  # bumped on every write: readers of derived files know when to refresh

    # --- reading --------------------------------------------------------
    def load(self) -> JobStore:
        self.jobs = {}
        for path in sorted(self.ws.jobs.glob("*.json")):
            try:
                job = Job.model_validate(read_json(path))
            except (OSError, ValueError, ValidationError) as exc:
                # Records are written atomically, so this is outside damage: keep it for a human.
                log.error("unreadable job record %s (%s); set aside as .corrupt", path.name, exc)
                os.replace(path, path.with_suffix(".corrupt"))
                continue
            self.jobs[job.id] = job
        return self

    def get(self, job_id: str) -> Job:
        try:
            return self.jobs[job_id]
        except KeyError:
            raise JobNotFound(f"no job {job_id}") from None

    def active(self) -> list[Job]:
        """Jobs still to train, in the order they will run."""
        return sorted((j for j in self.jobs.values() if j.status.active), key=Job.sort_key)

    def finished(self) -> list[Job]:
        return sorted((j for j in self.jobs.values() if not j.status.active), key=lambda j: j.id)

    def file_path(self, job: Job) -> Path:
        return self.ws.root / job.path

    # --- writing --------------------------------------------------------
    def save(self, job: Job) -> None:
        atomic_write_json(self.ws.job_record(job.id), job.model_dump(mode="json"))
        self.jobs[job.id] = job
        self.revision += 1

    def new_id(self, when: datetime | None = None) -> str:
        stem = (when or datetime.now()).strftime("%Y%m%d_%H%M%S")
        candidate, n = stem, 1
        while candidate in self.jobs or self.ws.job_record(candidate).exists():
            n += 1
            candidate = f"{stem}_{n}"
        return candidate

    def back_order(self, priority: Priority) -> float:
        """An order that runs after every job of its class."""
        orders = [j.order for j in self.jobs.values() if j.priority == priority]
        return max(orders, default=0.0) + 1.0

    def front_order(self, priority: Priority) -> float:
        """An order that runs before every active job of its class."""
        orders = [j.order for j in self.active() if j.priority == priority]
        return min(orders, default=1.0) - 1.0

    def admit(self, src: Path, priority: Priority, job_id: str | None = None,
              overrides: dict[str, Any] | None = None) -> Job:
        """Take a settled inbox file into `data/queued/` as a new queued job (with its own settings, if any)."""
        job_id = job_id or self.new_id()
        dst = self.queued_path(job_id, src.name)
        job = Job(
            id=job_id, file=src.name, priority=priority, order=self.back_order(priority),
            path=str(dst.relative_to(self.ws.root)), overrides=overrides or {},
        )
        job.pending = PendingMove(src=str(src), dst=str(dst), status=JobStatus.QUEUED, reason="arrived")
        self.save(job)
        self._finish_move(job)
        return job

    def queued_path(self, job_id: str, name: str) -> Path:
        return self.ws.queued / f"{job_id}__{name}"

    def retry(self, job: Job) -> None:
        """A failed job's file back to `data/queued/`, queued behind its class; checked again like a new file.
        Its error report goes (the record's history keeps the reason); its checkpoints stay to resume from."""
        src = self.file_path(job)
        job.order, job.retries, job.examples = self.back_order(job.priority), 0, None
        job.pending = PendingMove(src=str(src), dst=str(self.queued_path(job.id, job.file)),
                                  status=JobStatus.QUEUED, reason="retried")
        self.save(job)
        self._finish_move(job)
        error_path(src).unlink(missing_ok=True)

    def move(self, job: Job, status: JobStatus, reason: str = "", error: dict[str, Any] | None = None) -> None:
        """Change a job's status; a final status also moves its file to the matching folder.

        `error` (failed jobs) is written as `NAME.error.json` before the file moves, so the
        file is never in data/failed without its reason.
        """
        folder = {
            JobStatus.COMPLETED: self.ws.completed,
            JobStatus.FAILED: self.ws.failed,
            JobStatus.SKIPPED: self.ws.skipped,
        }.get(status)
        if folder is None:
            job.set_status(status, reason)
            self.save(job)
            return
        src = self.file_path(job)
        dst = unique_path(folder, job.file, job.id)
        job.pending = PendingMove(src=str(src), dst=str(dst), status=status, reason=reason)
        self.save(job)
        if error is not None:
            atomic_write_json(error_path(dst), error)
        self._finish_move(job)

    def _finish_move(self, job: Job) -> None:
        pending = job.pending
        assert pending is not None
        src, dst = Path(pending.src), Path(pending.dst)
        if src.exists() or src.is_symlink():
            if dst.exists():
                raise FileExistsError(f"job {job.id}: {dst} already exists")
            durable_rename(src, dst)
        elif not dst.exists():
            log.error("job %s: its file is gone from %s and never reached %s", job.id, src, dst)
        job.path = str(dst.relative_to(self.ws.root))
        job.pending = None
        job.set_status(pending.status, pending.reason)
        self.save(job)

    # --- crash repair ---------------------------------------------------
    def recover(self) -> None:
        """Repair whatever a crash left half done; run once before the daemon starts work."""
        for job in list(self.jobs.values()):
            if job.pending is not None:
                log.warning("job %s: finishing an interrupted move to %s", job.id, job.pending.dst)
                self._finish_move(job)
            if job.status in (JobStatus.TRAINING, JobStatus.PAUSED):
                job.end_run("daemon stopped")
                job.set_status(JobStatus.QUEUED, "daemon restarted; resumes from its last checkpoint")
                self.save(job)
            if job.status.active and not self.file_path(job).exists():
                log.error("job %s: its file %s is missing; marking failed", job.id, job.path)
                job.set_status(JobStatus.FAILED, f"file {job.path} disappeared")
                self.save(job)
        owned = {Path(j.path).name for j in self.jobs.values()}
        for path in sorted(self.ws.queued.iterdir()):
            if path.name in owned or path.name.startswith("."):
                continue
            match = _QUEUED_NAME.match(path.name)
            job_id = match.group(1) if match and match.group(1) not in self.jobs else self.new_id()
            name = match.group(2) if match else path.name
            log.warning("adopting %s, found in data/queued without a record, as job %s", path.name, job_id)
            job = Job(id=job_id, file=name, order=self.back_order("normal"),
                      path=str(path.relative_to(self.ws.root)))
            job.set_status(JobStatus.QUEUED, "adopted at startup")
            self.save(job)

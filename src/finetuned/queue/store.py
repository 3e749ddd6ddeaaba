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

from finetuned.errors import FinetunedError
from finetuned.fsio import (
    NAME_MAX,
    atomic_write_json,
    durable_rename,
    fit_name,
    is_disk_full,
    name_bytes,
    read_json,
    remove_file,
    remove_tree,
    text_name,
    unique_path,
)
from finetuned.queue.job import InvalidTransition, Job, JobStatus, PendingMove, Priority
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

_QUEUED_NAME = re.compile(r"^(\d{8}_\d{6}(?:_\d+)?)__(.+)$")
# A data file's name leaves room for what is written beside it (NAME.error.json, NAME.config.json) and
# for their temporaries; a longer name is shortened with a hash, and the record keeps the name as dropped.
DATA_NAME_MAX = NAME_MAX - 32


def error_path(failed_file: Path) -> Path:
    return failed_file.with_name(failed_file.name + ".error.json")


def queued_name(job_id: str, name: str) -> str:
    """`JOB_ID__NAME` in data/queued/, within DATA_NAME_MAX bytes."""
    return fit_name(f"{job_id}__{name}", DATA_NAME_MAX)


class JobNotFound(FinetunedError):
    pass


class JobStore:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.jobs: dict[str, Job] = {}
        self.revision = 0  # bumped on every write: readers of derived files know when to refresh
        # Files whose record could not be repaired at startup: the inbox must not take them a second time.
        self.held: set[Path] = set()

    # --- reading --------------------------------------------------------
    def load(self) -> JobStore:
        self.jobs = {}
        for path in sorted(self.ws.jobs.glob("*.json")):
            try:
                job = Job.model_validate(read_json(path))
            except (OSError, ValueError, ValidationError) as exc:
                # Records are written atomically, so this is outside damage: keep it for a human.
                log.error("unreadable job record %s (%s); set aside as .corrupt", path.name, exc)
                try:
                    os.replace(path, path.with_suffix(".corrupt"))
                except OSError as err:
                    log.error("could not set %s aside: %s", path.name, err.strerror)
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
        name = text_name(src.name)
        dst = self.queued_path(job_id, name)
        job = Job(
            id=job_id, file=name, priority=priority, order=self.back_order(priority),
            path=str(dst.relative_to(self.ws.root)), overrides=overrides or {},
        )
        job.pending = PendingMove(src=str(src), dst=str(dst), status=JobStatus.QUEUED, reason="arrived")
        self.save(job)
        try:
            self._finish_move(job)
        except OSError:
            if job.pending is not None and (src.exists() or src.is_symlink()):
                # Not renamed: the file stays in the inbox, and its record goes with the intent.
                remove_file(self.ws.job_record(job_id))
                self.jobs.pop(job_id, None)
            raise
        return job

    def queued_path(self, job_id: str, name: str) -> Path:
        return self.ws.queued / queued_name(job_id, name)

    def retry(self, job: Job, fresh_config: bool = False) -> None:
        """A failed job's file back to `data/queued/`, queued behind its class; checked again like a new file.
        Its error report goes (the record's history keeps the reason); its checkpoints stay to resume from,
        with the settings frozen at its first start. With `fresh_config` it starts over as a new job would,
        with config.json as it is then: a checkpoint trained with other settings is no place to resume."""
        src = self.file_path(job)
        if fresh_config:
            # The checkpoints go before the record says step 0: a crash in between leaves a job that resumes
            # with its old settings from nothing, never one that resumes their checkpoint with new ones.
            remove_tree(self.ws.job_checkpoints(job.id))
            remove_tree(self.ws.tensorboard_dir(job.id))
            remove_file(self.ws.metrics_file(job.id))
            job.config, job.step, job.total_steps = None, 0, None
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
        dst = unique_path(folder, job.file, job.id, DATA_NAME_MAX)
        job.pending = PendingMove(src=str(src), dst=str(dst), status=status, reason=reason)
        self.save(job)
        if error is not None:
            atomic_write_json(error_path(dst), error)
        self._finish_move(job)

    def _finish_move(self, job: Job) -> None:
        pending = job.pending
        assert pending is not None
        src, dst = Path(pending.src), Path(pending.dst)
        if name_bytes(dst.name) > DATA_NAME_MAX or ((src.exists() or src.is_symlink()) and dst.exists()):
            # A name too long for the file system (an older version wrote it) or taken: a new one,
            # recorded before the rename like any intent.
            dst = unique_path(dst.parent, dst.name, job.id, DATA_NAME_MAX)
            log.warning("job %s: its file goes to %s instead", job.id, dst.name)
            pending.dst = str(dst)
            self.save(job)
        if src.exists() or src.is_symlink():
            durable_rename(src, dst)
        elif not dst.exists():
            log.error("job %s: its file is gone from %s and never reached %s", job.id, src, dst)
        job.path = str(dst.relative_to(self.ws.root))
        job.pending = None
        job.set_status(pending.status, pending.reason)
        self.save(job)

    # --- crash repair ---------------------------------------------------
    def recover(self, why: str = "") -> None:
        """Repair whatever a crash left half done; run once before the daemon starts work.

        One record that cannot be repaired is logged and left out of the queue (its file where it
        is), never a reason for the daemon not to start. A full disk is the exception: it is raised,
        and the daemon waits for space and tries again.
        """
        self.held = set()
        left_out: list[Job] = []
        for job in list(self.jobs.values()):
            try:
                self._repair(job, why)
            except (OSError, InvalidTransition) as exc:
                if is_disk_full(exc):
                    raise
                log.error("job %s: its record cannot be repaired (%s); left out of the queue until it is fixed",
                          job.id, exc)
                self.jobs.pop(job.id)
                left_out.append(job)
                if job.pending is not None:
                    self.held.add(Path(job.pending.src))
        owned = {Path(j.path).name for j in [*self.jobs.values(), *left_out]}
        for path in sorted(self.ws.queued.iterdir()):
            if path.name in owned or path.name.startswith("."):
                continue
            if not path.is_file():
                log.warning("data/queued/%s is not a file; left alone", text_name(path.name))
                continue
            match = _QUEUED_NAME.match(path.name)
            named = match.group(1) if match else None
            free = named is not None and named not in self.jobs and not self.ws.job_record(named).exists()
            job_id = named if free and named else self.new_id()
            name = text_name(match.group(2) if match else path.name)
            log.warning("adopting %s, found in data/queued without a record, as job %s", name, job_id)
            job = Job(id=job_id, file=name, order=self.back_order("normal"),
                      path=str(path.relative_to(self.ws.root)))
            job.set_status(JobStatus.QUEUED, "adopted at startup")
            self.save(job)

    def _repair(self, job: Job, why: str) -> None:
        if job.pending is not None:
            log.warning("job %s: finishing an interrupted move to %s", job.id, job.pending.dst)
            self._finish_move(job)
        if job.status in (JobStatus.TRAINING, JobStatus.PAUSED):
            job.end_run(why or "daemon stopped")
            job.set_status(JobStatus.QUEUED, f"{why or 'daemon restarted'}; resumes from its last checkpoint")
            self.save(job)
        if job.status.active and not self.file_path(job).exists():
            log.error("job %s: its file %s is missing; marking failed", job.id, job.path)
            job.set_status(JobStatus.FAILED, f"file {job.path} disappeared")
            self.save(job)

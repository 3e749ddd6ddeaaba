"""The files a person or a program reads to see what the daemon is doing.

`control/queue.json` and `control/status.json` (SPEC section 3) and the
`status/*.json` details, each built as its model (`queue/status_files.py`, whose
schemas are published in docs/schemas/) and written atomically. The daemon calls `write`
when something changed and at least every heartbeat interval, so a reader can
tell a live daemon from a dead one by the heartbeat's age.

A file that cannot be written (someone made `control/queue.json` a folder) is
one logged error, not the daemon's end; a full disk is raised, for the daemon to
hold the line, and the space kept aside in `control/.disk-reserve` is what lets
these files still say why.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from pydantic import BaseModel

from finetuned import controls
from finetuned.config import Config
from finetuned.fsio import atomic_write_json, is_disk_full, remove_file
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.render import Progress, human_duration, queue_document
from finetuned.queue.status_files import (
    QueueStatusFile,
    StatusFile,
    SystemHealthFile,
    TrainingJob,
    TrainingStatusFile,
    document,
)
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

HEARTBEAT_SECONDS = 1.0
RESERVE_BYTES = 1 << 20  # a few rewrites of every state file


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).isoformat(timespec="seconds")


def system_health(ws: Workspace) -> SystemHealthFile:
    vm = psutil.virtual_memory()
    disk = shutil.disk_usage(ws.root)
    return SystemHealthFile(
        time=iso(time.time()),
        ram_total_gb=round(vm.total / 2**30, 2), ram_used_percent=vm.percent,
        disk_free_gb=round(disk.free / 2**30, 2), disk_total_gb=round(disk.total / 2**30, 2),
        cpu_percent=psutil.cpu_percent(interval=None), cpu_count=os.cpu_count(),
        gpu=None,
    )


def examples_per_step(job: Job, total: int | None, settings: Config | None) -> float | None:
    """The job's examples over its steps: what turns the pace in steps into examples before the
    worker has measured one (a resumed job), from the job's own settings, not config.json's."""
    if settings is None or settings.training.max_steps or not job.examples or not total:
        return None  # max_steps cuts the epochs short: the steps no longer say how many examples
    return job.examples * settings.training.epochs / total


class StateWriter:
    def __init__(self, ws: Workspace, started: float) -> None:
        self.ws = ws
        self.started = started
        self._last_write = 0.0
        self._last_health = 0.0
        self.monitor_url: str | None = None
        self._broken: set[Path] = set()  # files that could not be written, logged once

    def reserve(self) -> None:
        """Set space aside (again) for the day the disk fills up; quietly nothing when there is none."""
        path = self.ws.disk_reserve
        try:
            if path.stat().st_size >= RESERVE_BYTES:
                return
        except FileNotFoundError:
            pass
        try:
            with open(path, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, RESERVE_BYTES)
        except OSError:
            remove_file(path)

    def release_reserve(self) -> None:
        remove_file(self.ws.disk_reserve)

    def _write(self, path: Path, model: BaseModel) -> None:
        try:
            atomic_write_json(path, document(model))
        except OSError as exc:
            if is_disk_full(exc):
                raise
            if path not in self._broken:
                log.error("cannot write %s: %s; going on without it until it can be written",
                          path.relative_to(self.ws.root), exc.strerror or exc)
                self._broken.add(path)
            return
        if path in self._broken:
            log.info("%s is written again", path.relative_to(self.ws.root))
            self._broken.discard(path)

    def due(self) -> bool:
        return time.time() - self._last_write >= HEARTBEAT_SECONDS

    def write(
        self, store: JobStore, current: Job | None, progress: Progress | None, state: str, phase: str | None,
        worker_pid: int | None, reason: str = "", hold: str | None = None, config_error: str | None = None,
        settings: Config | None = None,
    ) -> None:
        """`settings`: the current job's own (the workspace's when none trains), for the figures they decide."""
        now = time.time()
        active = store.active()
        self._write(self.ws.queue_json, queue_document(active, current, progress))
        self._write(self.ws.status_json, StatusFile(
            state=state, reason=reason, pid=os.getpid(), worker_pid=worker_pid,
            started=iso(self.started), heartbeat=iso(now), heartbeat_unix=now,
            current_job=current.id if current else None, phase=phase,
            paused=controls.paused(self.ws), monitor_url=self.monitor_url,
            hold=hold, config_error=config_error,
            preview_every_steps=settings.previews.every_steps if settings is not None else None,
        ))
        training = TrainingStatusFile(job=None, state=state, time=iso(now))
        if current is not None:
            fields: dict[str, Any] = {
                "id": current.id, "file": current.file, "priority": current.priority, "status": current.status,
                "phase": phase, "examples": current.examples, "warnings": current.warnings,
            }
            if progress is not None and progress.job_id == current.id:
                # Only now: a progress key is in the file once the daemon knows it (a writer dumps exclude_unset).
                fields.update({
                    "step": progress.step, "total_steps": progress.total, "percent": progress.percent,
                    "loss": progress.loss, "learning_rate": progress.learning_rate,
                    "tokens_per_second": progress.tokens_per_second,
                    "examples_per_second": progress.examples_per_second,
                    "eta_seconds": progress.eta_seconds, "eta": human_duration(progress.eta_seconds),
                    "examples_per_step": examples_per_step(current, progress.total, settings),
                })
            training.job = TrainingJob(**fields)
        self._write(self.ws.training_status_json, training)
        counts = {s.value: 0 for s in JobStatus}
        for job in store.jobs.values():
            counts[job.status.value] += 1
        waiting = [j for j in active if j.status == JobStatus.QUEUED]
        self._write(self.ws.queue_status_json, QueueStatusFile(
            time=iso(now), counts=counts, queued=len(waiting),
            queued_high=sum(j.priority == "high" for j in waiting),
            queued_examples=sum(j.examples or 0 for j in waiting),
        ))
        if now - self._last_health >= 10:
            self._write(self.ws.system_health_json, system_health(self.ws))
            self._last_health = now
        self._last_write = now

"""Tokenising queued files ahead of their turn, in the preparer process.

The daemon never starts a job the preparer is working on (it waits, which is no
slower), so the two never write the same token cache.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from finetuned.daemon.supervisor import WorkerHandle
from finetuned.queue.job import JobStatus
from finetuned.worker.preparer import main as preparer_main

if TYPE_CHECKING:
    from finetuned.daemon.daemon import Daemon

log = logging.getLogger("finetuned.daemon")


class Prefetcher:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self.handle: WorkerHandle | None = None
        self.busy: str | None = None
        self.seen: set[str] = set()  # prepared, or tried: the worker covers what failed here

    def tick(self) -> None:
        if self.handle is not None:
            self._read()
        if self.busy is None and self.d.config.data.prepare_ahead:
            self._next()

    def _read(self) -> None:
        assert self.handle is not None
        for message in self.handle.receive():
            if message["type"] == "ready":
                continue
            job = self.d.store.jobs.get(message["job_id"])
            self.busy = None
            if message["type"] == "failed" and message.get("data_error") and job is not None \
                    and job.status == JobStatus.QUEUED:
                self.d.outcomes.fail(job, message["reason"], message["data_error"])
            elif message["type"] == "failed":
                log.warning("job %s: preparing ahead failed (%s); it is prepared when it starts",
                            message["job_id"], message["reason"])
        if not self.handle.alive():
            log.warning("preparer %s", self.handle.exit_reason())
            self.handle, self.busy = None, None

    def _next(self) -> None:
        current = self.d.current.id if self.d.current else None
        for job in self.d.store.active():
            if job.status != JobStatus.QUEUED or not job.validated or job.id == current or job.id in self.seen:
                continue
            if self.handle is None:
                self.handle = WorkerHandle(str(self.d.ws.root), preparer_main, "preparer")
            self.seen.add(job.id)
            self.busy = job.id
            self.handle.send({"type": "prepare", "job_id": job.id, "file": str(self.d.store.file_path(job)),
                              "sha256": job.sha256, "config": self.d.config.model_dump(mode="json")})
            return

    def close(self) -> None:
        if self.handle is not None:
            self.handle.shutdown()
            self.handle = None

"""Tokenising queued files ahead of their turn, in the preparer process.

The daemon never starts a job the preparer is working on (it waits, which is no
slower), so the two never write the same token cache. A file the preparer finds
cannot train fails while it waits, not when its turn comes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from finetuned.config import Config
from finetuned.processes.handle import ChildHandle
from finetuned.processes.protocol import Failed, FailKind, Prepare, Prepared
from finetuned.queue.endings import Endings
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

PREPARER = "finetuned.worker.preparer"


class Prefetcher:
    def __init__(self, ws: Workspace, store: JobStore, endings: Endings) -> None:
        self.ws = ws
        self.store = store
        self.endings = endings
        self.child = ChildHandle(str(ws.root), PREPARER, "preparer")  # started with the first file to prepare
        self.busy: str | None = None
        self.seen: set[str] = set()  # prepared, or tried: the worker covers what failed here

    def tick(self, config_for: Callable[[Job], Config | None], current: str | None, start: bool = True) -> None:
        """Read the preparer's answers; with `start`, hand it the next queued file (with that job's settings)."""
        self._read()
        if self.busy is None and start:
            self._next(config_for, current)

    def _read(self) -> None:
        for report in self.child.receive():
            if not isinstance(report, Prepared | Failed):
                continue
            self.busy = None
            job = self.store.jobs.get(report.job_id)
            if isinstance(report, Failed) and report.kind is FailKind.DATA and job is not None \
                    and job.status == JobStatus.QUEUED:
                self.endings.failed(job, report.reason, report.report)
            elif isinstance(report, Failed):
                log.warning("job %s: preparing ahead failed (%s); it is prepared when it starts",
                            report.job_id, report.reason)
        if self.child.exited() is not None:
            self.busy = None

    def _next(self, config_for: Callable[[Job], Config | None], current: str | None) -> None:
        for job in self.store.active():
            if job.status != JobStatus.QUEUED or not job.validated or job.id == current or job.id in self.seen:
                continue
            config = config_for(job)
            if config is None or not config.data.prepare_ahead:
                continue
            self.seen.add(job.id)
            self.busy = job.id
            self.child.send(Prepare(job_id=job.id, file=self.store.file_path(job), sha256=job.sha256,
                                    config=config))
            return

    def close(self) -> None:
        self.child.shutdown()

    def abandon(self) -> None:
        """Stop at once and forget what was asked (the disk is full): what is queued is asked again later."""
        self.child.abandon()
        self.busy = None
        self.seen.clear()

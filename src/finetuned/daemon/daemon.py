"""The daemon's main loop: ingest, read the worker, apply controls, schedule, report.

One thread owns every decision; the worker trains in its own process and the
daemon talks to it only at optimizer-step boundaries (`yield`). Each tick is
cheap and idempotent, so a missed file-system event costs at most one poll
interval.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetuned.config import Config, ConfigError
from finetuned.daemon.consolidation import ScheduledConsolidation
from finetuned.daemon.lock import WorkspaceLock
from finetuned.daemon.outcomes import Outcomes
from finetuned.daemon.prefetch import Prefetcher
from finetuned.daemon.statefiles import StateWriter
from finetuned.daemon.supervisor import WorkerHandle
from finetuned.data import validate_file
from finetuned.data.report import file_report
from finetuned.fsio import remove_file
from finetuned.lifecycle import notify as notifications
from finetuned.lifecycle.line import line_exclusions
from finetuned.queue import actions
from finetuned.queue.inbox import Inbox, Wakeup
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.render import Progress
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

if TYPE_CHECKING:
    from finetuned.monitor.server import MonitorServer

log = logging.getLogger("finetuned.daemon")


class Daemon:
    def __init__(self, ws: Workspace, config: Config, monitor: bool = True) -> None:
        self.ws = ws
        self.config = config
        self.monitor_enabled = monitor
        self.store = JobStore(ws)
        self.inbox = Inbox(ws, config.inbox)
        self.worker: WorkerHandle | None = None
        self.current: Job | None = None
        self.progress: Progress | None = None
        self.phase: str | None = None
        self.phase_reason = ""  # why the worker is held up (a full disk), shown in status.json
        self.yielding: str | None = None  # the reason of a yield sent and not yet answered
        self.paused_since: float | None = None
        self.shutdown_requested = 0
        self.started = time.time()
        self.state_writer = StateWriter(ws, self.started)
        self.outcomes = Outcomes(self)
        self.prefetch = Prefetcher(self)
        self.worker_factory: Callable[[str], WorkerHandle] = WorkerHandle
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")
        self._validating: dict[str, Future[Any]] = {}
        self._dirty = True
        self.consolidation = ScheduledConsolidation(ws)
        self._written_revision = -1
        self._step_times: list[float] = []
        self._last_tokens = self._last_examples = 0

    # --- lifecycle ------------------------------------------------------
    def run(self) -> None:
        with WorkspaceLock(self.ws.lock_file):
            self.store.load().recover()
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            server = self._start_monitor()
            wakeup = Wakeup([self.ws.inbox, self.ws.control])
            log.info("daemon started on %s (pid %d, base model %s, %s)", self.ws.root, os.getpid(),
                     self.config.base_model, "watching" if wakeup.watching else "polling")
            self.notify("daemon_started", pid=os.getpid(), base_model=self.config.base_model)
            try:
                while not self._finished():
                    self.tick()
                    wakeup.wait(self._sleep_seconds())
            finally:
                wakeup.close()
                self._close()
                if server is not None:
                    server.stop()

    def _start_monitor(self) -> MonitorServer | None:
        if not self.monitor_enabled:
            return None
        from finetuned.monitor.server import MonitorServer

        server = MonitorServer(self.ws, self.config.monitor)
        server.start()
        self.state_writer.monitor_url = server.url
        log.info("monitor at %s", server.url)
        return server

    def notify(self, event: str, **payload: Any) -> None:
        """Tell the user's webhook or command (in the background; a failure is only logged)."""
        notifications.notify(self.config.notify, event, {"workspace": str(self.ws.root), **payload})

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.shutdown_requested += 1
        if self.shutdown_requested == 1:
            log.info("%s: checkpointing and stopping (send again to stop at once)", signal.Signals(signum).name)
        else:
            log.warning("second signal: stopping the worker now, losing the steps since its last checkpoint")
            if self.worker is not None:
                self.worker.kill()

    def _finished(self) -> bool:
        if not self.shutdown_requested:
            return False
        if self.current is None or self.current.status != JobStatus.TRAINING:
            return True
        if self.worker is None or not self.worker.alive():
            return True
        if self.yielding is None:
            self._request_yield("shutdown")
        return False

    def _close(self) -> None:
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None
        self.prefetch.close()
        if self.current is not None and self.current.status != JobStatus.QUEUED:
            self.store.end_run(self.current, "daemon stopped")
            self.store.move(self.current, JobStatus.QUEUED, "daemon stopped; resumes from its last checkpoint")
        self.current = None
        self._validator.shutdown(wait=False, cancel_futures=True)
        self.consolidation.wait()
        self.state_writer.monitor_url = None  # the monitor stops with the daemon
        self.write_state(force=True, state="stopped")
        log.info("daemon stopped")
        self.notify("daemon_stopped", pid=os.getpid())

    def _sleep_seconds(self) -> float:
        if self.worker is not None or self.prefetch.busy or self.inbox.waiting or self._validating:
            return 0.1
        return self.config.inbox.poll_seconds

    # --- one tick -------------------------------------------------------
    def tick(self) -> None:
        for request in actions.pending(self.ws):
            actions.answer(self.ws, self.store, request)
            self._dirty = True
        self._ingest()
        self._collect_validations()
        self._read_worker()
        self._watch_worker()
        self.prefetch.tick()
        self._apply_controls()
        if self.consolidation.tick(idle=self.current is None and not self.shutdown_requested):
            self._dirty = True
        self._schedule()
        self.write_state()

    def _ingest(self) -> None:
        for path, priority in self.inbox.scan():
            self.inbox.forget(path)
            try:
                job = self.store.admit(path, priority)
            except OSError as exc:
                log.error("could not take %s: %s", path, exc)
                continue
            log.info("job %s: %s queued (%s priority)", job.id, job.file, priority)
            if self.store.file_path(job).is_symlink():
                # Only the link moved: whatever it points to, inside the workspace or not, is left untouched.
                message = "symlinks are not accepted: copy the file into the inbox instead"
                self.outcomes.fail(job, message, file_report(job.file, "symlink", message))
            self._dirty = True
        for job in self.store.active():
            if not job.validated and job.id not in self._validating and job.status == JobStatus.QUEUED:
                self._validating[job.id] = self._validator.submit(
                    validate_file, self.store.file_path(job), self.config.data)

    def _collect_validations(self) -> None:
        for job_id, future in list(self._validating.items()):
            if not future.done():
                continue
            del self._validating[job_id]
            job = self.store.jobs.get(job_id)
            if job is None or job.status != JobStatus.QUEUED:
                continue
            try:
                result = future.result()
            except Exception as exc:  # a validator bug must not kill the daemon; the file is kept
                log.exception("job %s: validation crashed", job_id)
                self.outcomes.fail(job, f"validation crashed: {exc}", None)
                continue
            if not result.ok:
                self.outcomes.fail(job, result.error["error"], result.error)
                continue
            twin = self._same_content(job, result.sha256)
            if twin is not None:
                message = (f"the same content as job {twin.id} ({twin.file}, {twin.status.value}); "
                           "set inbox.allow_duplicates to train it again")
                self.outcomes.fail(job, message, file_report(job.file, "duplicate", message))
                continue
            job.examples, job.format, job.sha256 = result.examples, result.format, result.sha256
            self.store.save(job)
            log.info("job %s: %d %s examples", job.id, job.examples, job.format)
            self._dirty = True

    def _same_content(self, job: Job, sha256: str | None) -> Job | None:
        """A job already queued or trained on these exact bytes (failed and skipped ones don't count)."""
        if sha256 is None or self.config.inbox.allow_duplicates:
            return None
        for other in self.store.jobs.values():
            if other.id != job.id and other.sha256 == sha256 and other.status not in (
                    JobStatus.FAILED, JobStatus.SKIPPED):
                return other
        return None

    def _read_worker(self) -> None:
        if self.worker is None:
            return
        for message in self.worker.receive():
            self.outcomes.handle(message)
            self._dirty = True

    def _watch_worker(self) -> None:
        worker = self.worker
        if worker is None:
            return
        if not worker.alive():
            self._read_worker()  # its last words, if any
            if self.worker is None:
                return
            reason = worker.exit_reason()
            self.worker = None
            if self.current is not None and self.current.status == JobStatus.TRAINING:
                self.outcomes.crashed(self.current, reason)
            elif not worker.stopping:
                log.warning("%s while idle", reason)
            return
        silent = time.time() - worker.last_heard
        if self.current is not None and self.current.status == JobStatus.TRAINING \
                and silent > self.config.control.step_timeout_seconds:
            log.error("job %s: no progress for %.0fs; killing the worker", self.current.id, silent)
            worker.kill()
            self.worker = None
            self.outcomes.crashed(self.current, f"hung: no progress for {silent:.0f}s")

    # --- controls -------------------------------------------------------
    def _apply_controls(self) -> None:
        ws = self.ws
        job = self.current
        training = job is not None and job.status == JobStatus.TRAINING
        if training and self.yielding is None:
            for reason, path in (("skip", ws.skip_file), ("stop", ws.stop_file), ("pause", ws.pause_file)):
                if path.exists():
                    self._request_yield(reason)
                    return
            if job.priority == "normal" and self._next_job(high_only=True) is not None:
                self._request_yield("preempt")
            return
        if training:
            return
        if job is not None and job.status == JobStatus.PAUSED:
            if ws.skip_file.exists():
                self.outcomes.skipped(job, "skipped while paused")
            elif ws.stop_file.exists():
                self.outcomes.requeued(job, "stop", "stopped while paused")
            elif not ws.pause_file.exists():
                self._resume_paused(job)
            elif time.time() - (self.paused_since or time.time()) > self.config.control.pause_release_after_seconds \
                    and self.worker is not None:
                log.info("paused for over %.0fs: releasing the model's memory",
                         self.config.control.pause_release_after_seconds)
                self.worker.shutdown()
                self.worker = None
        for path in (ws.skip_file, ws.stop_file):
            if path.exists() and (self.current is None or self.current.status != JobStatus.TRAINING):
                if self.current is None:
                    log.info("%s: nothing is training; removed", path.name)
                remove_file(path)

    def _request_yield(self, reason: str) -> None:
        assert self.current is not None and self.worker is not None
        log.info("job %s: %s requested; checkpointing at the next step boundary", self.current.id, reason)
        self.yielding = reason
        self.worker.send({"type": "yield", "reason": reason})

    def _resume_paused(self, job: Job) -> None:
        nxt = self._next_job(high_only=job.priority == "normal")
        if nxt is not None and nxt.id != job.id:
            self.outcomes.requeued(job, "preempt", "priority work arrived during the pause")
            return
        log.info("job %s: resumed", job.id)
        self.paused_since = None
        self._start(job)

    # --- scheduling -----------------------------------------------------
    def _next_job(self, high_only: bool = False) -> Job | None:
        for job in self.store.active():
            if job.status != JobStatus.QUEUED or (high_only and job.priority != "high"):
                continue
            return job if job.validated else None  # keep FIFO: wait for the head's check
        return None

    def _schedule(self) -> None:
        if self.consolidation.running:
            return  # it may switch the base: the queue waits behind it
        if self.current is not None or self.shutdown_requested or self.ws.pause_file.exists():
            return
        job = self._next_job()
        if job is not None and job.id != self.prefetch.busy:  # else wait: it is being tokenised now
            self._start(job)

    def _start(self, job: Job) -> None:
        try:
            self.config = self.ws.load_config()  # edits apply from the next job on
        except ConfigError as exc:
            log.error("%s; keeping the settings in use", exc)
        if self.worker is None:
            self.worker = self.worker_factory(str(self.ws.root))
        self.current = job
        self.progress = Progress(job.id, job.step, job.total_steps)
        self.phase = "starting"
        self.phase_reason = ""
        self.yielding = None
        self._step_times = []
        self._last_tokens = self._last_examples = 0
        self.store.start_run(job)
        self.store.move(job, JobStatus.TRAINING, "started")
        link_current(self.ws, self.store.file_path(job))
        exclude = [j.id for j in self.store.jobs.values() if j.status in (JobStatus.SKIPPED, JobStatus.FAILED)]
        exclude += line_exclusions(self.ws, self.store.jobs.values())  # after use/rollback: a fresh line
        self.worker.send({"type": "train", "job_id": job.id, "file": str(self.store.file_path(job)),
                          "config": self.config.model_dump(mode="json"), "line_exclude": exclude,
                          "sha256": job.sha256})
        log.info("job %s: training %s (step %d)", job.id, job.file, job.step)
        self._dirty = True

    def clear_current(self) -> None:
        self.current = None
        self.progress = None
        self.phase = None
        self.phase_reason = ""
        self.yielding = None
        unlink_current(self.ws)

    def record_step(self, message: dict[str, Any]) -> None:
        """Progress, throughput and ETA from a worker's step report."""
        self._step_times = ([*self._step_times, message["step_seconds"]])[-20:]
        mean = sum(self._step_times) / len(self._step_times)
        remaining = message["total_steps"] - message["step"]
        p = self.progress or Progress(message["job_id"], 0, None)
        p.step, p.total = message["step"], message["total_steps"]
        p.loss, p.learning_rate = message["loss"], message["lr"]
        p.eta_seconds = mean * remaining
        new_tokens = message["tokens"] - self._last_tokens
        new_examples = message["examples"] - self._last_examples
        if message["step_seconds"] > 0 and new_tokens >= 0 and new_examples >= 0:
            p.tokens_per_second = new_tokens / message["step_seconds"]
            p.examples_per_second = new_examples / message["step_seconds"]
        self._last_tokens, self._last_examples = message["tokens"], message["examples"]
        self.progress = p
        self.phase, self.phase_reason = "training", ""

    # --- reporting ------------------------------------------------------
    def write_state(self, force: bool = False, state: str | None = None) -> None:
        changed = self._dirty or self.store.revision != self._written_revision
        if not (force or changed or self.state_writer.due()):
            return
        if state is None:
            if self.current is None:
                state = "paused" if self.ws.pause_file.exists() else "idle"
            elif self.phase_reason:
                state = "paused"  # the worker holds the line itself (a full disk) and says why
            else:
                state = self.current.status.value
        self.state_writer.write(self.store, self.current, self.progress, state, self.phase,
                                self.worker.pid if self.worker else None, self.phase_reason)
        self._dirty = False
        self._written_revision = self.store.revision


def link_current(ws: Workspace, target: Path) -> None:
    tmp = ws.current_link.with_name(".current.jsonl.tmp")
    remove_file(tmp)
    os.symlink(os.path.relpath(target, ws.current_link.parent), tmp)
    os.replace(tmp, ws.current_link)


def unlink_current(ws: Workspace) -> None:
    remove_file(ws.current_link)

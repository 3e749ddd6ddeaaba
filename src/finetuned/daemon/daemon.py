"""The daemon's main loop: ingest, read the worker, apply controls, schedule, report.

One thread owns every decision; the worker trains in its own process and the
daemon talks to it only at optimizer-step boundaries (`Yield`). Each tick is
cheap and idempotent, so a missed file-system event costs at most one poll
interval. What the job in the worker is doing lives in `Session`; how a job's
run ends, in `Endings`; the daemon decides which of them happens when.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetuned import controls
from finetuned import notify as notifications
from finetuned.config import Config, ConfigError
from finetuned.daemon.askdesk import AskDesk
from finetuned.daemon.consolidation import ScheduledConsolidation
from finetuned.daemon.diskhold import DiskHold
from finetuned.daemon.prefetch import Prefetcher
from finetuned.daemon.session import Session
from finetuned.daemon.settings import Settings
from finetuned.daemon.statefiles import StateWriter
from finetuned.daemon.states import ACTIONS, PUBLISHED, Action
from finetuned.daemon.validation import Validator
from finetuned.data.report import file_report
from finetuned.fsio import durable_rename, is_disk_full, remove_file
from finetuned.lifecycle.history import line_exclusions
from finetuned.lock import WorkspaceLock
from finetuned.overrides import frozen, job_config, listed, read_sidecar, sidecar_for, sidecar_of
from finetuned.processes.protocol import WAITING_FOR_DISK, YieldReason
from finetuned.queue import actions
from finetuned.queue.endings import Endings
from finetuned.queue.inbox import Inbox, Wakeup
from finetuned.queue.job import Job, JobStatus, Priority
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

if TYPE_CHECKING:
    from finetuned.monitor.server import MonitorServer

log = logging.getLogger("finetuned.daemon")


class Daemon:
    def __init__(self, ws: Workspace, config: Config, monitor: bool = True) -> None:
        self.ws = ws
        self.settings = Settings(ws, config)
        self.monitor_enabled = monitor
        self.store = JobStore(ws)
        self.inbox = Inbox(ws, config.inbox)
        self.endings = Endings(self.store, self.notify)
        self.session = Session(ws, self.store, self.endings, self.notify)
        self.validator = Validator()
        self.prefetch = Prefetcher(ws, self.store, self.endings)
        self.consolidation = ScheduledConsolidation(ws)
        self.asks = AskDesk(ws, self.session)
        self.started = time.time()
        self.monitor: MonitorServer | None = None
        self._monitor_wanted = config.monitor  # the monitor section last applied
        self.state_writer = StateWriter(ws, self.started)
        self.shutdown_requested = 0
        self._dirty = True
        self._written_revision = -1
        self.disk = DiskHold(ws, self.store, self.inbox, self.state_writer, self._abandon_work, self.write_state,
                             self.notify)

    @property
    def config(self) -> Config:
        """The workspace's settings now: config.json as last read (the last good one after a bad edit)."""
        return self.settings.config

    def job_config(self, job: Job) -> Config | None:
        """The settings `job` trains with: the workspace's, the file's own over them, those frozen at its first
        start over both; None when they no longer validate (the job has failed, saying why)."""
        try:
            return job_config(self.config, job.overrides, f"job {job.id}'s settings", job.config, ws=self.ws)
        except ConfigError as exc:
            if self.session.job is job:  # paused in the worker: it leaves the worker as it fails
                self.session.fail_paused(str(exc))
            else:
                self.endings.failed(job, str(exc))
            self._dirty = True
            return None

    # --- lifecycle ------------------------------------------------------
    def run(self) -> None:
        with WorkspaceLock(self.ws.lock_file):
            self.state_writer.reserve()
            self.disk.guarded(self.disk.recover)
            signal.signal(signal.SIGTERM, self._on_signal)
            signal.signal(signal.SIGINT, self._on_signal)
            server = self.monitor = self._start_monitor()
            wakeup = Wakeup([self.ws.inbox, self.ws.control])
            log.info("daemon started on %s (pid %d, base model %s, %s)", self.ws.root, os.getpid(),
                     self.config.base_model, "watching" if wakeup.watching else "polling")
            self.notify("daemon_started", pid=os.getpid(), base_model=self.config.base_model)
            try:
                while not self._finished():
                    if self.disk.reason:
                        self.disk.wait()
                    else:
                        self.disk.guarded(self.tick)
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

    def _monitor_settings(self) -> None:
        """A token set (or changed) while the daemon runs guards the monitor from the next request on."""
        server, wanted = self.monitor, self.config.monitor
        if server is None or wanted == self._monitor_wanted:
            return
        self._monitor_wanted = wanted
        later = server.apply(wanted)
        log.info("monitor settings applied%s", f"; {', '.join(later)}: at the next start" if later else "")

    def notify(self, event: str, **payload: Any) -> None:
        """Tell the user's webhook or command (in the background; a failure is only logged)."""
        notifications.notify(self.config.notify, event, {"workspace": str(self.ws.root), **payload})

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.shutdown_requested += 1
        if self.shutdown_requested == 1:
            log.info("%s: checkpointing and stopping (send again to stop at once)", signal.Signals(signum).name)
        else:
            log.warning("second signal: stopping the worker now, losing the steps since its last checkpoint")
            self.session.kill_worker()

    def _finished(self) -> bool:
        if not self.shutdown_requested:
            return False
        session = self.session
        if not session.training or session.worker is None or not session.worker.alive():
            return True
        if session.yielding is None:
            session.request_yield(YieldReason.SHUTDOWN)
        return False

    def _close(self) -> None:
        self.asks.close()
        try:
            self.session.close()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            log.error("the disk is full: the job's stop is not recorded; the next start resumes it from its "
                      "last checkpoint")
        self.prefetch.close()
        self.validator.close()
        self.settings.close()
        self.consolidation.wait()
        self.state_writer.monitor_url = None  # the monitor stops with the daemon
        try:
            self.write_state(force=True, state="stopped")
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self.state_writer.release_reserve()  # its purpose: the last word still gets written
            try:
                self.write_state(force=True, state="stopped")
            except OSError:
                log.error("the disk is full: control/status.json keeps the last heartbeat")
        log.info("daemon stopped")
        self.notify("daemon_stopped", pid=os.getpid())

    def _abandon_work(self) -> None:
        """The disk is full: every child goes at once; what they were doing resumes from what the disk says."""
        for part in (self.session, self.prefetch, self.settings, self.asks):
            part.abandon()

    def _sleep_seconds(self) -> float:
        if self.session.worker is not None or self.prefetch.busy or self.inbox.waiting or self.validator.busy \
                or self.settings.checking or self.asks.busy:
            return 0.1
        return self.config.inbox.poll_seconds

    # --- one tick -------------------------------------------------------
    def tick(self) -> None:
        if self.settings.refresh():  # config.json re-read first: what follows uses the settings as they are now
            self._dirty = True
            self._monitor_settings()
        self.inbox.settings = self.config.inbox
        for request in actions.pending(self.ws):
            actions.answer(self.ws, self.store, request, before_reply=lambda: self.write_state(force=True))
        self._ingest()
        self._collect_validations()
        if self.session.read():
            self._dirty = True
        if self.session.refused is not None:  # the worker found the settings cannot train
            self.settings.refuse(self.session.refused)
            self.session.refused = None
        if self.session.watch(self.config.control.step_timeout_seconds, self.config.control.max_retries):
            self._dirty = True
        self.prefetch.tick(self.job_config, self.session.job.id if self.session.job else None,
                           start=self.settings.ready)
        self._apply_controls()
        if self.consolidation.tick(idle=self.session.job is None and not self.shutdown_requested):
            self._dirty = True
        self._schedule()
        # A consolidation merges a whole model in memory: no second one is loaded beside it to answer questions.
        self.asks.tick(self.config, answerer_allowed=not (self.consolidation.running or self.shutdown_requested))
        self.write_state()

    def _ingest(self) -> None:
        for path, priority in self.inbox.scan():
            self._admit(path, priority)
        for job in self.store.active():
            if not job.validated and job.status == JobStatus.QUEUED and not self.validator.checking(job.id):
                config = self.job_config(job)
                if config is not None:
                    self.validator.submit(job.id, self.store.file_path(job), config.data)

    def _admit(self, path: Path, priority: Priority) -> None:
        """Take a settled file into the queue, with its own settings when a sidecar came with it."""
        self.inbox.forget(path)
        sidecar = sidecar_of(path)
        overrides: dict[str, Any] = {}
        refused = None
        if sidecar is not None:
            self.inbox.forget(sidecar)
            try:
                if sidecar.is_symlink():
                    raise ConfigError(f"{sidecar.name}: symlinks are not accepted: copy the file instead")
                overrides = read_sidecar(sidecar, self.ws, self.config)
            except ConfigError as exc:
                refused = str(exc)
        try:
            job = self.store.admit(path, priority, overrides=overrides)
        except OSError as exc:
            if is_disk_full(exc):
                raise
            log.error("could not take %s: %s; it stays in the inbox until it changes", path, exc)
            self.inbox.refuse(path)
            return
        self._dirty = True
        own = f", its own settings: {listed(overrides)}" if overrides else ""
        log.info("job %s: %s queued (%s priority%s)", job.id, job.file, priority, own)
        if sidecar is not None and refused is not None:
            self.endings.failed(job, refused, file_report(job.file, "bad_settings", refused))
            durable_rename(sidecar, sidecar_for(self.store.file_path(job)))  # kept beside the failed file
            return
        if sidecar is not None:
            remove_file(sidecar)  # its content is in the job's record (and job.json) now
        if self.store.file_path(job).is_symlink():
            # Only the link moved: whatever it points to, inside the workspace or not, is left untouched.
            message = "symlinks are not accepted: copy the file into the inbox instead"
            self.endings.failed(job, message, file_report(job.file, "symlink", message))

    def _collect_validations(self) -> None:
        for job_id, result, error in self.validator.done():
            job = self.store.jobs.get(job_id)
            if job is None or job.status != JobStatus.QUEUED:
                continue
            self._dirty = True
            if error is not None:  # a validator bug must not kill the daemon; the file is kept
                log.error("job %s: validation crashed: %s", job_id, error)
                self.endings.failed(job, f"validation crashed: {error}")
                continue
            assert result is not None
            if not result.ok:
                self.endings.failed(job, result.error["error"], result.error)
                continue
            twin = self._same_content(job, result.sha256)
            if twin is not None:
                message = (f"the same content as job {twin.id} ({twin.file}, {twin.status.value}); "
                           "set inbox.allow_duplicates to train it again")
                self.endings.failed(job, message, file_report(job.file, "duplicate", message))
                continue
            job.examples, job.format, job.sha256 = result.examples, result.format, result.sha256
            self.store.save(job)
            log.info("job %s: %d %s examples", job.id, job.examples, job.format)

    def _same_content(self, job: Job, sha256: str | None) -> Job | None:
        """A job already queued or trained on these exact bytes (failed and skipped ones don't count)."""
        if sha256 is None or self.config.inbox.allow_duplicates:
            return None
        for other in self.store.jobs.values():
            if other.id != job.id and other.sha256 == sha256 and other.status not in (
                    JobStatus.FAILED, JobStatus.SKIPPED):
                return other
        return None

    # --- controls -------------------------------------------------------
    def _apply_controls(self) -> None:
        """What the pending control does in the session's state: the one table of daemon/states.py."""
        session = self.session
        control = controls.pending(self.ws)
        match ACTIONS[session.state, control]:
            case Action.YIELD:
                assert control is not None
                session.request_yield(YieldReason.of(control))
            case Action.GO_ON:
                assert session.job is not None
                if session.job.priority == "normal" and self._next_job(high_only=True) is not None:
                    session.request_yield(YieldReason.PREEMPT)
            case Action.END:
                assert control is not None
                session.end_paused(YieldReason.of(control))
                self._dirty = True
            case Action.RESUME if self.settings.ready:
                self._resume_paused()
            case Action.RESUME | Action.HOLD if session.job is not None:
                self._release_when_paused_long()
            case Action.DISCARD:
                stray = controls.consume_stray(self.ws)
                log.info("%s: nothing is training; removed", ", ".join(f".{c.value}" for c in stray))

    def _release_when_paused_long(self) -> None:
        session = self.session
        limit = self.config.control.pause_release_after_seconds
        if session.worker is not None and time.time() - (session.paused_since or time.time()) > limit:
            log.info("paused for over %.0fs: releasing the model's memory", limit)
            session.release_model()

    def _resume_paused(self) -> None:
        job = self.session.job
        assert job is not None
        if controls.quiet(self.ws):
            return  # a version switch is under way: resume once it ends
        nxt = self._next_job(high_only=job.priority == "normal")
        if nxt is not None and nxt.id != job.id:
            self.session.end_paused(YieldReason.PREEMPT)
            self._dirty = True
            return
        log.info("job %s: resumed at step %d", job.id, job.step)
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
        if self.session.job is not None or self.shutdown_requested or controls.paused(self.ws):
            return
        if controls.quiet(self.ws):
            return  # a version switch is under way
        if not self.settings.ready:
            return  # the settings are being checked, or cannot train: the queue holds
        job = self._next_job()
        if job is not None and job.id != self.prefetch.busy:  # else wait: it is being tokenised now
            self._start(job)

    def _start(self, job: Job) -> None:
        config = self.job_config(job)
        if config is None:
            return
        if job.config is None:  # its first start: what it trains with until it ends (recorded as it starts)
            job.config = frozen(config)
        exclude = [j.id for j in self.store.jobs.values() if j.status in (JobStatus.SKIPPED, JobStatus.FAILED)]
        exclude += line_exclusions(self.ws, self.store.jobs.values())  # after use/rollback: a fresh line
        self.asks.make_way()
        self.session.start(job, config, exclude)
        self._dirty = True

    # --- reporting ------------------------------------------------------
    def _idle_phase(self) -> str | None:
        """What the daemon does while nothing trains: status never says idle while it works."""
        if self.shutdown_requested:
            return "stopping"
        if self.settings.checking:
            return "checking the base model"
        if self.prefetch.busy:
            return f"tokenising {self._file_of(self.prefetch.busy)}"
        if self.validator.busy:
            return "validating " + ", ".join(self._file_of(j) for j in self.validator.running)
        return None

    def _file_of(self, job_id: str) -> str:
        job = self.store.jobs.get(job_id)
        return f"{job.file} (job {job_id})" if job else job_id

    def write_state(self, force: bool = False, state: str | None = None) -> None:
        changed = self._dirty or self.store.revision != self._written_revision
        if not (force or changed or self.state_writer.due()):
            return
        session, settings = self.session, self.settings
        if state is None:
            state = PUBLISHED[session.state]
            if self.disk.reason or session.reason:  # the daemon, or the worker itself, holds for a full disk
                state = "paused"
            elif session.job is None and settings.hold:
                state = "holding"
            elif session.job is None and controls.paused(self.ws):
                state = "paused"
        if self.disk.reason:
            phase, reason = WAITING_FOR_DISK, self.disk.reason
        else:
            phase = session.phase if session.job is not None else self._idle_phase()
            reason = session.reason or ((settings.hold or "") if session.job is None else "")
        self.state_writer.write(self.store, session.job, session.progress, state, phase, session.worker_pid,
                                reason, hold=settings.hold, config_error=settings.invalid,
                                settings=session.config or self.config)
        self._dirty = False
        self._written_revision = self.store.revision

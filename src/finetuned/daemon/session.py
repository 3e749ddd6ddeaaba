"""The job in the worker: the process, what it last reported, what was asked of it.

The daemon decides (start this job, yield for that reason, release the model);
the session carries it out and turns the worker's reports into the job's
progress and, at the end of a run, into one of `Endings`. It owns every fact
about the job in training; the daemon reads them, never writes them.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from finetuned import controls
from finetuned.config import Config, DistributedSettings, without_secrets
from finetuned.daemon.states import SessionState
from finetuned.fsio import remove_file
from finetuned.overrides import touches_model
from finetuned.processes.handle import Child
from finetuned.processes.launch import launcher_for
from finetuned.processes.protocol import (
    WAITING_FOR_DISK,
    Answer,
    Checkpoint,
    Completed,
    Failed,
    FailKind,
    Phase,
    Report,
    Started,
    Step,
    Train,
    Yield,
    Yielded,
    YieldReason,
)
from finetuned.queue.endings import Endings, Notify
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.render import Progress
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

RATE_WINDOW = 20  # steps the ETA averages over

# How a run ends when the worker hands the job back for a reason, at a step boundary or while paused:
# the note its record keeps in each case. The ending itself is `Session._end`.
NOTES = {
    YieldReason.SKIP: ("skipped at step {step}", "skipped while paused"),
    YieldReason.STOP: ("stop at step {step}", "stopped while paused"),
    YieldReason.PREEMPT: ("preempt at step {step}", "priority work arrived during the pause"),
    YieldReason.SHUTDOWN: ("daemon stopped at step {step}", "daemon stopped while paused"),
}


def training_child(ws_root: str, settings: DistributedSettings) -> Child:
    """The worker `distributed` asks for, started: one process, or the agent of a group of ranks."""
    return launcher_for(settings).child(ws_root, settings)


class Session:
    def __init__(self, ws: Workspace, store: JobStore, endings: Endings, notify: Notify,
                 worker_factory: Callable[[str, DistributedSettings], Child] = training_child) -> None:
        self.ws = ws
        self.store = store
        self.endings = endings
        self.notify = notify
        self.worker_factory = worker_factory
        self.worker: Child | None = None
        self.launched: DistributedSettings | None = None  # how the worker was started (one rank or several)
        self.job: Job | None = None
        self.config: Config | None = None  # the settings the job started with
        self.progress: Progress | None = None
        self.phase: str | None = None
        self.reason = ""  # why the worker is held up (a full disk), shown in status.json
        self.refused: str | None = None  # the workspace's settings cannot train (the worker said so): hold
        self.yielding: YieldReason | None = None  # asked and not yet answered
        self.paused_since: float | None = None
        self._running = False  # the worker said Started: the job trains (else it is still starting)
        self._step_times: list[float] = []
        self._last_tokens = self._last_examples = 0
        self._answers: list[Answer] = []  # to the monitor's questions: the daemon's AskDesk records them

    @property
    def state(self) -> SessionState:
        job = self.job
        if job is None:
            return SessionState.IDLE
        if job.status == JobStatus.PAUSED:
            return SessionState.PAUSED if self.worker is not None else SessionState.RELEASED
        if self.yielding is not None:
            return SessionState.YIELDING
        return SessionState.TRAINING if self._running else SessionState.STARTING

    @property
    def training(self) -> bool:
        """The job is in the worker's hands: starting, training or yielding."""
        return self.state in (SessionState.STARTING, SessionState.TRAINING, SessionState.YIELDING)

    @property
    def paused(self) -> bool:
        return self.state in (SessionState.PAUSED, SessionState.RELEASED)

    @property
    def worker_pid(self) -> int | None:
        return self.worker.pid if self.worker is not None else None

    # --- what the daemon asks -------------------------------------------
    def start(self, job: Job, config: Config, exclude: list[str]) -> None:
        """Hand `job` to the worker (started now, or kept from the last job with its model loaded)."""
        if self.worker is not None and self.launched != config.distributed:
            log.info("distributed settings changed: restarting the training worker")
            self.release_model()
        if self.worker is None:
            self.worker = self.worker_factory(str(self.ws.root), config.distributed)
            self.launched = config.distributed
        self.job, self.config = job, config
        self.progress = Progress(job.id, job.step, job.total_steps)
        self.phase, self.reason, self.yielding, self.paused_since = "starting", "", None, None
        self._running = False
        self._step_times, self._last_tokens, self._last_examples = [], 0, 0
        job.start_run()
        self.store.move(job, JobStatus.TRAINING, "started")
        link_current(self.ws, self.store.file_path(job))
        self.worker.send(Train(job=job.model_copy(deep=True), file=self.store.file_path(job),
                               config=without_secrets(config), line_exclude=frozenset(exclude)))
        log.info("job %s: training %s (step %d)", job.id, job.file, job.step)

    def request_yield(self, reason: YieldReason) -> None:
        assert self.job is not None and self.worker is not None
        log.info("job %s: %s requested at step %d; checkpointing at the next step boundary", self.job.id,
                 reason.value, self.job.step)
        self.yielding = reason
        self.phase = self._training_phase()
        self.worker.send(Yield(reason))

    def end_paused(self, reason: YieldReason) -> None:
        """A skip, stop or priority work reached the paused job: checkpointed already, it leaves the worker now."""
        self._end(reason, NOTES[reason][1])

    def _end(self, reason: YieldReason, note: str) -> None:
        """The job leaves the worker for `reason`: the one place each reason's ending is decided."""
        job = self._take()
        match reason:
            case YieldReason.SKIP:
                self.endings.skipped(job, note)
            case YieldReason.STOP:
                self.endings.requeued(job, note, front=False)
            case YieldReason.PREEMPT:
                self.endings.requeued(job, note, front=True)
            case YieldReason.SHUTDOWN:
                self.endings.stopped(job)
        if reason.control is not None:
            controls.consume(self.ws, reason.control)

    def fail_paused(self, reason: str) -> None:
        """The paused job cannot go on (its own settings no longer validate): it fails and leaves the worker."""
        self.endings.failed(self._take(), reason)

    def release_model(self) -> None:
        """The pause outlasted `control.pause_release_after_seconds`: the worker exits, its memory with it."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None

    def kill_worker(self) -> None:
        if self.worker is not None:
            self.worker.kill()

    def abandon(self) -> None:
        """Stop the worker and forget the job without a word to its record (the disk is full): the record
        on disk, repaired as after a restart, says where the job resumes."""
        if self.worker is not None:
            self.worker.abandon()
            self.worker = None
        if self.job is not None:
            self._take()

    def close(self) -> None:
        """The daemon stops: the worker exits and the job keeps its place in the queue."""
        if self.worker is not None:
            self.worker.shutdown()
            self.worker = None
        if self.job is not None and self.job.status != JobStatus.QUEUED:
            self.endings.stopped(self._take())

    # --- what the worker says -------------------------------------------
    def read(self) -> bool:
        """Act on the worker's reports; True when any came."""
        if self.worker is None:
            return False
        reports = self.worker.receive()
        for report in reports:
            self._handle(report)
        return bool(reports)

    def take_answers(self) -> list[Answer]:
        """The worker's answers to questions since the last call (they are no part of the job's progress)."""
        answers, self._answers = self._answers, []
        return answers

    def watch(self, step_timeout: float, max_retries: int) -> bool:
        """A dead or silent worker: its job crashed. True when something changed."""
        worker = self.worker
        if worker is None:
            return False
        if not worker.alive():
            self.read()  # its last words, if any
            if self.worker is None:
                return True
            self.worker = None
            reason = worker.exit_reason()
            if self.training:
                self.endings.crashed(self._take(), reason, max_retries)
            elif not worker.stopping:
                log.warning("%s while idle", reason)
            return True
        silent = time.time() - worker.last_heard
        if self.training and silent > step_timeout:
            assert self.job is not None
            log.error("job %s: no progress for %.0fs; killing the worker", self.job.id, silent)
            worker.kill()
            self.worker = None
            self.endings.crashed(self._take(), f"hung: no progress for {silent:.0f}s", max_retries)
            return True
        return False

    def _handle(self, report: Report) -> None:
        if isinstance(report, Answer):
            self._answers.append(report)
            return
        job = self.job
        if job is None or getattr(report, "job_id", None) != job.id:
            return  # Ready, or a late word about a job that already ended
        match report:
            case Phase():
                self._phase(job, report)
            case Started():
                job.total_steps, job.step = report.total_steps, report.step
                job.runs[-1].from_step = report.step  # where it resumed, which a crash may have set back
                for warning in report.warnings:
                    if warning not in job.warnings:
                        log.warning("job %s: %s", job.id, warning)
                job.warnings = list(report.warnings)
                self.store.save(job)
                self._running = True
                self.phase = self._training_phase()
                origin = (f"resuming from {Path(report.resumed_from).name} (step {job.step})" if report.resumed_from
                          else "from the start")
                log.info("job %s: %d steps over %d examples, %s", job.id, job.total_steps, report.examples, origin)
            case Step():
                job.step = report.step
                self._record_step(report)
                assert self.config is not None
                every = self.config.training.log_every_steps
                if job.step == 1 or job.step % every == 0 or job.step == report.total_steps:
                    log.info("job %s: step %d/%d loss %.4f", job.id, job.step, report.total_steps, report.loss)
            case Checkpoint():
                self.phase, self.reason = self._training_phase(), ""
                job.step = report.step
                self.store.save(job)
            case Yielded():
                self._yielded(report)
            case Completed():
                self.endings.completed(self._take(), report.summary)
            case Failed(kind=FailKind.DISK):
                # The daemon's own writes would fail next: it holds the line, as for any write that finds no space.
                raise OSError(errno.ENOSPC, f"job {job.id}: {report.reason}")
            case Failed(kind=FailKind.CRASH):
                assert self.config is not None
                retries = self.config.control.max_retries  # read before _take() forgets the job's settings
                self.endings.crashed(self._take(), report.reason, retries)
                if report.worker_exits:  # it is going down: the retry must not be handed to it
                    self.release_model()
            case Failed(kind=FailKind.CONFIG) if not touches_model(job.overrides):
                self.endings.requeued(self._take(), f"held: {report.reason}", front=True)
                self.refused = report.reason
            case Failed(kind=FailKind.CONFIG):
                self.endings.failed(self._take(), f"its own settings cannot train: {report.reason}", report.report)
            case Failed():
                self.endings.failed(self._take(), report.reason, report.report)

    def _phase(self, job: Job, report: Phase) -> None:
        if report.phase == WAITING_FOR_DISK and self.phase != WAITING_FOR_DISK:
            self.notify("paused_for_disk", job_id=job.id, step=job.step, reason=report.reason)
        if report.reason and report.reason != self.reason:
            log.warning("job %s: %s", job.id, report.reason)
        elif report.phase != self.phase:
            log.info("job %s: %s", job.id, report.phase)
        self.phase, self.reason = report.phase, report.reason

    def _yielded(self, report: Yielded) -> None:
        assert self.job is not None
        self.job.step = report.step
        self.yielding = None
        if report.reason is YieldReason.PAUSE:
            self.endings.paused(self.job)
            self.paused_since = time.time()
            self.phase = "paused"
        else:
            self._end(report.reason, NOTES[report.reason][0].format(step=report.step))

    def _record_step(self, report: Step) -> None:
        """Progress, throughput and ETA from a step report."""
        self._step_times = [*self._step_times, report.step_seconds][-RATE_WINDOW:]
        mean = sum(self._step_times) / len(self._step_times)
        p = self.progress or Progress(report.job_id, 0, None)
        p.step, p.total = report.step, report.total_steps
        p.loss, p.learning_rate = report.loss, report.lr
        p.eta_seconds = mean * (report.total_steps - report.step)
        new_tokens = report.tokens - self._last_tokens
        new_examples = report.examples - self._last_examples
        if report.step_seconds > 0 and new_tokens >= 0 and new_examples >= 0:
            p.tokens_per_second = new_tokens / report.step_seconds
            p.examples_per_second = new_examples / report.step_seconds
        self._last_tokens, self._last_examples = report.tokens, report.examples
        self.progress = p
        self.phase, self.reason = self._training_phase(), ""

    def _training_phase(self) -> str:
        """Between steps: training, or writing the checkpoint a control asked for."""
        if self.yielding is None:
            return "training"
        return "checkpointing before " + {YieldReason.SHUTDOWN: "the daemon stops",
                                          YieldReason.PREEMPT: "priority work"}.get(self.yielding,
                                                                                   f"the {self.yielding.value}")

    def _take(self) -> Job:
        """The job leaves the worker: forget it here before its ending is recorded."""
        job = self.job
        assert job is not None
        self.job = self.config = self.progress = self.phase = self.yielding = self.paused_since = None
        self.reason, self._running = "", False
        unlink_current(self.ws)
        return job


def link_current(ws: Workspace, target: Path) -> None:
    tmp = ws.current_link.with_name(".current.jsonl.tmp")
    remove_file(tmp)
    os.symlink(os.path.relpath(target, ws.current_link.parent), tmp)
    os.replace(tmp, ws.current_link)


def unlink_current(ws: Workspace) -> None:
    remove_file(ws.current_link)

"""Random sequences of drops, controls, cancels and crashes against the daemon's real queue logic.

The daemon (`Daemon.tick`), its job store, inbox, controls and state files are the
real ones; only the training worker is replaced by `SimWorker`, which speaks the
worker protocol and "trains" one step per `advance`, so thousands of transitions
run in seconds. The real worker is covered by the end-to-end tests.
"""

from __future__ import annotations

import itertools
import json
from collections import defaultdict

from helpers import chat_lines, make_workspace, tiny_config, write_jsonl
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from finetuned import fsio
from finetuned.daemon.daemon import Daemon
from finetuned.processes.protocol import (
    CheckModel,
    Completed,
    ModelChecked,
    Order,
    Report,
    Shutdown,
    Started,
    Step,
    Train,
    Yield,
    Yielded,
    YieldReason,
)
from finetuned.queue.job import JobStatus


def arrival(job_id: str) -> tuple[str, int]:
    """Job ids are arrival times, with _2, _3... for arrivals in the same second."""
    stamp, _, n = job_id.partition("_")[2].partition("_")
    return job_id[:8] + stamp, int(n or 1)


class SimWorker:
    """The worker protocol with checkpoints kept in a dict that outlives "processes" (like a disk)."""

    disk: dict[str, int]  # job id -> last checkpointed step

    def __init__(self, disk: dict[str, int], trained: dict[str, list[int]], adapters) -> None:
        self.disk, self.trained, self.adapters = disk, trained, adapters
        self.inbox: list[Order] = []
        self.outbox: list[Report] = []
        self.job: str | None = None
        self.step = self.total = 0
        self.pid, self.last_heard, self.stopping, self._alive = 4242, 1e18, False, True

    # the Child interface the daemon uses (processes/handle.py)
    def send(self, message: Order) -> bool:
        self.inbox.append(message)
        return True

    def receive(self) -> list[Report]:
        for message in self.inbox:
            if isinstance(message, Train):
                self.job, self.total = message.job.id, 6
                self.step = self.disk.get(self.job, 0)
                self.outbox.append(Started(job_id=self.job, step=self.step, total_steps=self.total, examples=12,
                                           resumed_from=None))
            elif isinstance(message, Yield) and self.job:
                self.disk[self.job] = self.step
                self.outbox.append(Yielded(job_id=self.job, reason=message.reason, step=self.step, checkpoint="sim"))
                self.job = None
            elif isinstance(message, Shutdown):
                self._alive = False
        self.inbox.clear()
        out, self.outbox = self.outbox, []
        return out

    def advance(self) -> None:
        if self.job is None or not self._alive:
            return
        self.step += 1
        self.trained[self.job].append(self.step)
        self.outbox.append(Step(job_id=self.job, step=self.step, total_steps=self.total, loss=1.0, lr=1e-3,
                                tokens=self.step * 10, examples=self.step, step_seconds=0.01))
        if self.step % 2 == 0:
            self.disk[self.job] = self.step
        if self.step == self.total:
            (self.adapters / self.job).mkdir(parents=True)  # the real worker publishes its adapter first
            self.outbox.append(Completed(job_id=self.job, summary={
                "steps": self.step, "examples_trained": 12, "first_loss": 1.0, "final_loss": 1.0}))
            self.job = None

    def alive(self) -> bool:
        return self._alive

    def exit_reason(self) -> str:
        return "sim worker gone"

    def kill(self) -> None:
        self._alive = False

    def shutdown(self, timeout: float = 0) -> None:
        self.stopping, self._alive = True, False


class SimChecker:
    """The model checker's protocol: every config can train (models/check.py has its own tests)."""

    def __init__(self) -> None:
        self.answers: list[Report] = []
        self.stopping, self._alive = False, True

    def send(self, message: Order) -> bool:
        if isinstance(message, CheckModel):
            self.answers.append(ModelChecked(key=message.key, error=None, summary="simulated"))
        elif isinstance(message, Shutdown):
            self._alive = False
        return True

    def receive(self) -> list[Report]:
        out, self.answers = self.answers, []
        return out

    def alive(self) -> bool:
        return self._alive

    def exit_reason(self) -> str:
        return "sim checker gone"

    def shutdown(self, timeout: float = 0) -> None:
        self._alive = False


class QueueMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        import tempfile
        from pathlib import Path

        self.tmp = tempfile.TemporaryDirectory()
        config = tiny_config()
        config.inbox.settle_seconds = 0
        config.data.prepare_ahead = False  # the preparer is a real process; this test is about the queue
        self.ws = make_workspace(Path(self.tmp.name) / "ws", config)
        self.disk: dict[str, int] = {}
        self.trained: dict[str, list[int]] = defaultdict(list)
        self.dropped: list[tuple[str, str]] = []  # (file name, priority) in arrival order
        self.first_starts: list[str] = []
        self.workers: list[SimWorker] = []
        self.daemon = self._new_daemon()

    def _new_daemon(self) -> Daemon:
        daemon = Daemon(self.ws, self.ws.load_config(), monitor=False)
        daemon.session.worker_factory = self._new_worker
        daemon.settings.checker_factory = lambda _root: SimChecker()
        daemon.store.load().recover()
        return daemon

    def _new_worker(self, _root: str, _distributed: object) -> SimWorker:
        worker = SimWorker(self.disk, self.trained, self.ws.adapters)
        self.workers.append(worker)
        return worker

    def settle(self, steps: int = 0) -> None:
        for i in range(steps + 8):
            if i < steps and self.daemon.session.worker is not None:
                self.daemon.session.worker.advance()
            self.daemon.tick()
            while self.daemon.validator.busy:
                self.daemon.validator.wait()
                self.daemon.tick()
            current = self.daemon.session.job
            if current is not None and current.status == JobStatus.TRAINING and current.id not in self.first_starts:
                self.first_starts.append(current.id)

    def teardown(self) -> None:
        self.daemon.validator.wait()
        self.daemon.validator.close()
        self.tmp.cleanup()

    # --- rules ----------------------------------------------------------
    @rule(priority=st.booleans(), n=st.integers(1, 8))
    def drop(self, priority: bool, n: int) -> None:
        name = f"f{len(self.dropped)}.jsonl"
        folder = self.ws.inbox_priority if priority else self.ws.inbox_normal
        write_jsonl(folder / f".{name}.part", chat_lines(n)).rename(folder / name)
        self.dropped.append((name, "high" if priority else "normal"))
        self.settle()

    @rule(steps=st.integers(1, 5))
    def train(self, steps: int) -> None:
        self.settle(steps)

    @rule()
    def pause(self) -> None:
        self.ws.pause_file.touch()
        self.settle()

    @rule()
    def resume(self) -> None:
        self.ws.pause_file.unlink(missing_ok=True)
        self.settle()

    @rule(which=st.sampled_from(["stop", "skip"]))
    def control(self, which: str) -> None:
        (self.ws.control / f".{which}").touch()
        self.settle()

    @precondition(lambda self: any(j.status == JobStatus.QUEUED for j in self.daemon.store.jobs.values()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        from finetuned.queue import actions

        queued = sorted(j.id for j in self.daemon.store.jobs.values() if j.status == JobStatus.QUEUED)
        actions.submit(self.ws, "cancel", data.draw(st.sampled_from(queued)))
        self.settle()

    @rule()
    def crash(self) -> None:
        """The daemon dies at once (SIGKILL): its worker with it, nothing closed cleanly."""
        self.daemon.session.kill_worker()
        self.daemon.validator.wait()
        self.daemon.validator.close()
        self.daemon = self._new_daemon()
        self.settle()

    # --- invariants -----------------------------------------------------
    @invariant()
    def every_file_is_in_exactly_one_place(self) -> None:
        ws = self.ws
        for name, _ in self.dropped:
            places = [p for p in (ws.inbox_normal / name, ws.inbox_priority / name) if p.exists()]
            places += [p for p in ws.queued.iterdir() if p.name.endswith("__" + name)]
            places += [p for p in (ws.completed / name, ws.failed / name, ws.skipped / name) if p.exists()]
            assert len(places) == 1, (name, places)

    @invariant()
    def at_most_one_job_in_the_worker(self) -> None:
        busy = [j for j in self.daemon.store.jobs.values() if j.status in (JobStatus.TRAINING, JobStatus.PAUSED)]
        assert len(busy) <= 1, busy

    @invariant()
    def priority_work_is_never_left_waiting_behind_normal_work(self) -> None:
        current = self.daemon.session.job
        if current is None or current.status != JobStatus.TRAINING or current.priority == "high":
            return
        waiting = [j for j in self.daemon.store.active() if j.status == JobStatus.QUEUED and j.priority == "high"]
        assert not waiting or self.daemon.session.yielding == YieldReason.PREEMPT, waiting

    @invariant()
    def first_starts_follow_arrival_within_each_class(self) -> None:
        by_id = self.daemon.store.jobs
        for priority in ("high", "normal"):
            started = [by_id[i].id for i in self.first_starts if by_id[i].priority == priority]
            assert started == sorted(started, key=arrival), started

    @invariant()
    def completed_means_every_step_trained_and_no_step_redone_past_a_checkpoint(self) -> None:
        for job in self.daemon.store.jobs.values():
            steps = self.trained.get(job.id, [])
            if job.status == JobStatus.COMPLETED:
                assert set(steps) == set(range(1, 7)), (job.id, steps)
            assert steps == sorted(steps) or all(  # a redo only ever restarts from a checkpoint
                b > a or b - 1 in (0, *range(2, a + 1, 2)) for a, b in itertools.pairwise(steps)
            ), steps

    @invariant()
    def queue_json_matches_the_records(self) -> None:
        doc = json.loads(self.ws.queue_json.read_text()) if self.ws.queue_json.exists() else None
        if doc is None:
            return
        active = {j.id for j in self.daemon.store.active()}
        assert {e["id"] for e in doc["queue"]} == active
        statuses = [e["priority"] for e in doc["queue"] if e["status"] == "queued"]
        assert statuses == sorted(statuses, key=lambda p: p != "high"), "high before normal"


QueueMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


class TestQueueStateMachine(QueueMachine.TestCase):
    def setUp(self) -> None:
        # Thousands of state writes: this test is about the queue's logic, so skip the fsyncs (durability
        # is covered by the SIGKILL tests with real processes).
        fsio.DURABLE = False

    def tearDown(self) -> None:
        fsio.DURABLE = True

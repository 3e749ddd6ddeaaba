"""The agent's relay: the daemon's pipe carried to rank 0's connection and back (agent.py), so rank 0
speaks the protocol a single worker speaks. Rank 0 connects to its listener with the address and key the
agent gives it (in the ranks' environment for torchrun, in the loop's config for Ray)."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener, wait
from typing import Any

from finetuned.processes.protocol import (
    Completed,
    Failed,
    FailKind,
    Order,
    Phase,
    Report,
    Shutdown,
    Train,
    Yield,
    Yielded,
)

log = logging.getLogger("finetuned.worker")

DRAIN_SECONDS = 5.0  # how long the agent waits for rank 0's last words after the group failed
ORDER_SECONDS = 2.0  # how long a group that failed before rank 0 connected waits for the daemon's order


class Relay:
    """Carries the daemon's pipe to rank 0's connection and back, in a thread of the agent.

    It remembers the job in flight (its `Train`, until the job ends or yields, and a `Yield` asked
    of it), so a group that Ray Train restarts gets them again, and a group that fails can be
    reported as that job's crash.
    """

    def __init__(self, daemon: Connection, address: Any = None, family: str = "AF_UNIX") -> None:
        self.daemon = daemon
        self.key = os.urandom(32)
        self.listener = Listener(address, family, authkey=self.key)
        self.job: Train | None = None
        self.asked: Yield | None = None  # of the job in flight, not yet answered
        self.connections = 0  # rank 0s that connected: more than one means the group was restarted
        self.rank0_gone = threading.Event()  # set while no rank 0 is connected
        self.rank0_gone.set()
        self.on_reconnect: Callable[[], None] | None = None  # a new rank 0 after the first: the group restarted
        self._undelivered: list[Order] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._run, name="relay", daemon=True).start()

    @property
    def address(self) -> Any:
        return self.listener.address

    def send(self, message: Report) -> None:
        """To the daemon (the relay thread and the agent's main thread both speak)."""
        with self._lock, contextlib.suppress(OSError):
            self.daemon.send(message)

    def crashed(self, reason: str) -> None:
        """The group failed: the job in flight, if any, crashed (the daemon retries it)."""
        self.rank0_gone.wait(DRAIN_SECONDS)  # rank 0 may have reported the job's end already
        with self._lock:
            job, self.job, self.asked = self.job, None, None
        if job is None and self.rank0_gone.is_set():  # no rank 0 ever read the order: it waits in the pipe
            job = self._unread_train()
        if job is not None:
            self.send(Failed(job_id=job.job.id, kind=FailKind.CRASH, reason=reason, worker_exits=True))

    def _unread_train(self) -> Train | None:
        found = None
        with contextlib.suppress(EOFError, OSError):
            while self.daemon.poll(0 if found else ORDER_SECONDS):  # a failure at start may beat the order
                message = self.daemon.recv()
                found = message if isinstance(message, Train) else found
        return found

    def restarting(self, reason: str) -> None:
        """The group is being restarted under the job in flight: the daemon shows why."""
        job = self.job
        if job is not None:
            self.send(Phase(job_id=job.job.id, phase="restarting", reason=reason))

    def _run(self) -> None:
        while True:
            try:
                rank0 = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            self.rank0_gone.clear()
            if self.connections > 1 and self.on_reconnect is not None:
                self.on_reconnect()
            replay = [m for m in (self.job, self.asked) if m is not None]
            replay += [m for m in self._undelivered if m is not self.job and m is not self.asked]
            self._undelivered = []
            if not self._serve(rank0, replay):
                return

    def _serve(self, rank0: Connection, replay: list[Order]) -> bool:
        """Carry messages both ways until rank 0 goes (True: the next one may connect) or the daemon does."""
        try:
            for i, message in enumerate(replay):
                try:
                    rank0.send(message)
                except OSError:
                    self._undelivered = replay[i:]
                    return True
            while True:
                for conn in wait([self.daemon, rank0]):
                    try:
                        message = conn.recv()
                    except (EOFError, OSError):
                        if conn is self.daemon:  # the daemon is gone: so is the group's reason to be
                            with contextlib.suppress(OSError):
                                rank0.send(Shutdown())
                            return False
                        return True
                    if conn is self.daemon:
                        self._ordered(message)
                        try:
                            rank0.send(message)
                        except OSError:
                            self._undelivered.append(message)
                            return True
                    else:
                        self._reported(message)
                        self.send(message)
        finally:
            rank0.close()
            self.rank0_gone.set()

    def _ordered(self, message: Order) -> None:
        with self._lock:
            if isinstance(message, Train):
                self.job, self.asked = message, None
            elif isinstance(message, Yield) and self.job is not None:
                self.asked = message

    def _reported(self, message: Report) -> None:
        # Any of these leaves the group idle, waiting for the daemon's next order.
        if isinstance(message, Completed | Failed | Yielded):
            with self._lock:
                if self.job is not None and message.job_id == self.job.job.id:
                    self.job = self.asked = None

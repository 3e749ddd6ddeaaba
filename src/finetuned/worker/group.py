"""A training worker of several ranks, seen from the daemon as one child process on one pipe.

The daemon starts this agent as it starts a single worker (its own process group, killed with
the daemon). The agent launches the ranks, in its main thread, with torchrun's elastic launcher
(`--standalone`: the rendezvous is torchrun's own, on this machine; no restarts: a rank that fails
fails the group, and the daemon retries the job from its last checkpoint on a new group, as for a
crashed single worker), or drives a Ray Train run on a cluster (worker/on_ray.py).

Rank 0 connects back to the agent (a socket only the agent's ranks can use: they get its address
and key from the agent's environment), and the `Relay` thread carries the daemon's orders to rank 0
and rank 0's reports back, so rank 0 speaks the protocol a single worker speaks. When the group
fails, the agent reports the job in flight as crashed, with the failed rank and its error.

Every rank dies with the agent (parent-death signal; rank 0 also checks its parent at each step
boundary), and the agent with the daemon: a SIGKILL of the daemon leaves no rank behind. Nothing
here imports torch at module level: the daemon imports this module to name the entry point.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection, Listener, wait
from pathlib import Path
from typing import Any

from finetuned.config import DistributedSettings
from finetuned.worker.main import detach
from finetuned.worker.protocol import (
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

MONITOR_INTERVAL = 0.5  # seconds between torchrun's checks of its ranks: a dead rank is noticed this fast
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


def main(conn: Connection, ws_root: str, parent_pid: int, settings_json: str) -> None:
    if not detach(parent_pid):
        return
    from finetuned.logs import setup_logging
    from finetuned.workspace import Workspace

    settings = DistributedSettings.model_validate_json(settings_json)
    setup_logging(Workspace(Path(ws_root)), "training", stream=False)
    if settings.launcher == "ray":
        from finetuned.worker.on_ray import run_on_ray

        sys.exit(run_on_ray(conn, ws_root, settings))
    sys.exit(run_torchrun(conn, ws_root, settings))


def run_torchrun(conn: Connection, ws_root: str, settings: DistributedSettings) -> int:
    """`torchrun --standalone --nproc-per-node N -m finetuned.worker.rank WS_ROOT`, in this process."""
    import torch
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    from finetuned.worker.rank import AGENT_ADDRESS, AGENT_KEY, AGENT_PID, STRATEGY

    relay = Relay(conn)
    os.environ.update({AGENT_ADDRESS: relay.address, AGENT_KEY: relay.key.hex(), AGENT_PID: str(os.getpid()),
                       STRATEGY: settings.strategy})
    if not torch.cuda.is_available() and "OMP_NUM_THREADS" not in os.environ:
        # torchrun would give each CPU rank one thread: share the cores out instead.
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // settings.nproc_per_node))
    args = parse_args([
        "--standalone", f"--nproc-per-node={settings.nproc_per_node}", "--max-restarts=0",
        f"--monitor-interval={MONITOR_INTERVAL}", "-m", "finetuned.worker.rank", ws_root,
    ])
    log.info("starting %d ranks with torchrun (%s)", settings.nproc_per_node, settings.strategy)
    try:
        run(args)
    except ChildFailedError as exc:
        reason = group_failure(exc)
        log.error("the training group failed: %s", reason)
        relay.crashed(reason)
        return 1
    return 0


def group_failure(exc: Any) -> str:
    """One line for a failed torchrun group: which rank failed first, and how."""
    rank, failure = exc.get_first_failure()
    how = f"died from {failure.signal_name()}" if failure.exitcode < 0 else f"exited with code {failure.exitcode}"
    message = failure.message
    if isinstance(message, dict):  # the rank's error file, written by @record
        message = message.get("message", "")
    detail = f": {str(message).splitlines()[0]}" if message and "Signal" not in str(message) else ""
    hint = " (killed: out of memory?)" if failure.signal_name() == "SIGKILL" else ""
    return f"rank {rank} (pid {failure.pid}) {how}{hint}{detail}"

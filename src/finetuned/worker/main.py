"""The worker process: started by the daemon, dies with it, trains what it is told.

It runs in its own process group and ignores Ctrl+C (the daemon decides how to
stop), and asks the kernel to kill it when the daemon dies, so training never
goes on unsupervised. Nothing here imports torch at module level: the daemon
imports this module to name the process's entry point.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from finetuned.fsio import is_disk_full
from finetuned.worker.protocol import Ask, Failed, FailKind, Order, Ready, Report, Shutdown, Train, Yield

if TYPE_CHECKING:
    from finetuned.worker.world import World
    from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.worker")

_PR_SET_PDEATHSIG = 1
# Tests hold the worker at a known step: a file holding a step number N lets it finish steps up to
# N and then wait at that boundary (still reading orders) until the number grows or the file goes.
GATE_ENV = "FINETUNED_STEP_GATE"
GATE_POLL_SECONDS = 0.02


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        # Where prctl is missing, the getppid() check in poll() still catches a dead daemon.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def detach(parent_pid: int) -> bool:
    """Own process group, Ctrl+C ignored, killed with the daemon; False when the daemon is gone already."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    return os.getppid() == parent_pid


OrderT = TypeVar("OrderT")


def orders(conn: Connection, kind: type[OrderT]) -> Iterator[OrderT]:
    """A helper process's orders (the preparer's, the checker's, the answerer's), until the daemon sends
    anything else (Shutdown) or goes."""
    while True:
        try:
            order = conn.recv()
        except (EOFError, OSError):
            return
        if not isinstance(order, kind):
            return
        yield order


class Link:
    """The worker's end of the pipe: yields and asks are read at a step boundary; other orders wait for the loop.

    `parent_pid`: the process whose death ends this one (the daemon, or a group's agent); None where
    another supervisor ends it (Ray ends a run's actors with its driver).
    """

    def __init__(self, conn: Connection, parent_pid: int | None) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.held: list[Order] = []
        self.boundary: list[Yield | Ask] = []  # read, for the loop's next step boundary
        gate = os.environ.get(GATE_ENV)
        self.gate = Path(gate) if gate else None

    def send(self, message: Report) -> None:
        self.conn.send(message)

    def next_order(self) -> Order:
        """The next order, waiting for one; a closed pipe reads as Shutdown."""
        order = None
        while order is None:
            order = self.order_within(None)
        return order

    def order_within(self, seconds: float | None) -> Order | None:
        """The next order if one comes within `seconds` (None: however long it takes)."""
        if self.held:
            return self.held.pop(0)
        try:
            if seconds is not None and not self.conn.poll(seconds):
                return None
            return self.conn.recv()
        except (EOFError, OSError):
            return Shutdown()

    def poll(self, step: int) -> Yield | Ask | None:
        """A yield or an ask, if one came (in the order they came); the step gate (tests) may hold the
        worker here first, still answering."""
        while True:
            order = self._read()
            if order is not None or not self._gated(step):
                return order
            time.sleep(GATE_POLL_SECONDS)

    def check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            os._exit(0)  # the daemon is gone: never train unsupervised

    def _read(self) -> Yield | Ask | None:
        self.check_parent()
        while self.conn.poll():
            order = self.conn.recv()
            if isinstance(order, Yield | Ask):
                self.boundary.append(order)
            else:
                self.held.append(order)  # a train or shutdown order waits for the loop
        return self.boundary.pop(0) if self.boundary else None

    def _gated(self, step: int) -> bool:
        if self.gate is None:
            return False
        try:
            return step >= int(self.gate.read_text().strip())
        except (OSError, ValueError):
            return False


def main(conn: Connection, ws_root: str, parent_pid: int) -> None:
    if not detach(parent_pid):
        return
    from finetuned.logs import route_library_output, setup_logging
    from finetuned.worker.world import Solo
    from finetuned.workspace import Workspace

    ws = Workspace(Path(ws_root))
    setup_logging(ws, "training", stream=False)
    route_library_output()
    link = Link(conn, parent_pid)
    serve(ws, Solo(link.send, link.poll), link.next_order)


def serve(ws: Workspace, world: World, next_order: Callable[[], Order]) -> None:
    """Train what the daemon orders, one job at a time, until it says shut down.

    A job that crashes reaches the daemon as that job's failure. On several ranks the process then
    exits with the error: its partners may be waiting for it in a collective, so the whole group goes
    down, and the daemon retries the job on a new one from its last checkpoint.
    """
    from finetuned.worker.cache import ModelCache
    from finetuned.worker.recipe import run_job

    cache = ModelCache(ws)
    world.report(Ready(pid=os.getpid()))
    while True:
        order = next_order()
        if isinstance(order, Shutdown):
            return
        if not isinstance(order, Train):
            continue  # a yield with nothing training: nothing to yield
        try:
            run_job(ws, order, cache, world)
        except Exception as exc:  # a crash of one job must reach the daemon as that job's failure
            log.exception("job %s crashed", order.job.id)
            cache.drop()  # its state is unknown now: reload before the next job
            kind = FailKind.DISK if is_disk_full(exc) else FailKind.CRASH
            group = world.size > 1
            world.report(Failed(job_id=order.job.id, kind=kind, reason=f"{type(exc).__name__}: {exc}",
                                traceback=traceback.format_exc(), worker_exits=group))
            if group:
                raise

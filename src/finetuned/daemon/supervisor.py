"""The training worker as seen from the daemon: start, talk, watch, kill.

The worker is a spawned child in its own process group; the daemon records
how it died (exit code or signal) and tells a deliberate stop from a crash.
On several ranks the child is the group's agent (worker/group.py): the
daemon starts, talks to, watches and kills it exactly as a single worker,
and the ranks die with it.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable

from finetuned.config import DistributedSettings
from finetuned.worker.group import main as group_main
from finetuned.worker.main import main as worker_main
from finetuned.worker.protocol import Order, Report, Shutdown

log = logging.getLogger(__name__)


class WorkerHandle:
    def __init__(self, ws_root: str, target: Callable[..., None] = worker_main, name: str = "training worker",
                 extra: tuple[str, ...] = ()) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(child, ws_root, os.getpid(), *extra), name=f"finetuned {name}")
        self.process.start()
        child.close()
        self.pid = self.process.pid
        self.name = name
        self.last_heard = time.time()
        self.stopping = False
        log.info("started %s pid %s", name, self.pid)

    def send(self, message: Order) -> bool:
        try:
            self._conn.send(message)
            return True
        except (BrokenPipeError, OSError):
            return False

    def receive(self) -> list[Report]:
        messages: list[Report] = []
        try:
            while self._conn.poll():
                messages.append(self._conn.recv())
        except (EOFError, OSError):
            pass
        if messages:
            self.last_heard = time.time()
        return messages

    def alive(self) -> bool:
        return self.process.is_alive()

    def exit_reason(self) -> str:
        code = self.process.exitcode
        if code is None:
            return "still running"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
            return f"worker died from {name}{hint}"
        return f"worker exited with code {code}"

    def kill(self) -> None:
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, ValueError):
                self.process.kill()
        self.process.join(5)

    def abandon(self) -> None:
        """Kill it and close the pipe: nothing it would still say matters (the daemon starts over from disk)."""
        self.stopping = True
        self.kill()
        self._conn.close()

    def shutdown(self, timeout: float = 10) -> None:
        """Ask the worker to exit; kill it if it does not."""
        self.stopping = True
        self.send(Shutdown())
        self.process.join(timeout)
        if self.process.is_alive():
            log.warning("%s %s did not exit in %.0fs; killing it", self.name, self.pid, timeout)
            self.kill()
        self._conn.close()


def training_worker(ws_root: str, settings: DistributedSettings) -> WorkerHandle:
    """The worker `distributed` asks for: one process, or the agent of a group of ranks."""
    if settings.launcher == "none":
        return WorkerHandle(ws_root)
    name = f"training group ({settings.launcher}, {settings.world_size} ranks)"
    return WorkerHandle(ws_root, target=group_main, name=name, extra=(settings.model_dump_json(),))

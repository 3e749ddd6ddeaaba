"""A child process as the daemon sees it: started when first needed, talked to, watched, ended.

One `ChildHandle` per child program (the training worker, the preparer, the model checker, the
answerer). The child is a spawned process in its own process group (processes/child.py), named by
its module string, so the daemon never imports what the child does. The handle records how a child
died (exit code or signal), says it once in the log, tells a deliberate end from a crash, and starts
a fresh child the next time it is needed.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Protocol

from finetuned.processes.child import main as child_main
from finetuned.processes.protocol import Order, Report, Shutdown

log = logging.getLogger("finetuned.daemon")

RETIRE_SECONDS = 10.0  # how long an ended child may take to exit before it is killed
OUTBOX_LIMIT = 256  # orders waiting for a child that reads none (a worker deep in a step): more are refused


class Outbox:
    """A child's orders, written by a thread of their own: the daemon's loop never waits on a child's pipe.

    A worker inside a long step reads nothing until its step boundary; questions for it (each up to a few
    tens of KB) would fill the pipe's buffer and block whoever writes, so the writer is not the loop."""

    def __init__(self, conn: Connection, name: str) -> None:
        self._queue: queue.SimpleQueue[Order | None] = queue.SimpleQueue()
        self.broken = False
        threading.Thread(target=self._write, args=(conn,), name=f"orders for {name}", daemon=True).start()

    def put(self, message: Order) -> bool:
        if self.broken or self._queue.qsize() >= OUTBOX_LIMIT:
            return False
        self._queue.put(message)
        return True

    def close(self) -> None:
        self._queue.put(None)

    def _write(self, conn: Connection) -> None:
        while (message := self._queue.get()) is not None:
            try:
                conn.send(message)
            except (OSError, ValueError):  # the child is gone, or its pipe closed under us
                self.broken = True
                return


class ChildHandle:
    def __init__(self, ws_root: str, entry: str, name: str, *extra: str, lazy: bool = True) -> None:
        self.ws_root = ws_root
        self.entry = entry  # "package.module" whose serve() the child runs (processes/child.py)
        self.name = name
        self.extra = extra
        self.process: BaseProcess | None = None
        self._conn: Connection | None = None
        self._outbox: Outbox | None = None
        self.pid: int | None = None
        self.last_heard = time.time()
        self.stopping = False  # ended on purpose: its death is no crash
        if not lazy:
            self.start()

    # --- life -----------------------------------------------------------------
    @property
    def started(self) -> bool:
        return self.process is not None

    def start(self) -> None:
        """A fresh child, unless one runs already."""
        if self.process is not None and self.process.is_alive():
            return
        ctx = mp.get_context("spawn")  # never fork a process that runs threads
        self._conn, child = ctx.Pipe()
        self.process = ctx.Process(target=child_main, args=(self.entry, child, self.ws_root, os.getpid(), *self.extra),
                                   name=f"finetuned {self.name}")
        self.process.start()
        child.close()
        self._outbox = Outbox(self._conn, self.name)
        self.pid = self.process.pid
        self.last_heard = time.time()
        self.stopping = False
        log.info("started %s pid %s", self.name, self.pid)

    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def exited(self) -> str | None:
        """How the child ended, once, when it died since the last call: logged in one line (a warning unless
        it was ended on purpose). The next `send` starts a fresh one."""
        process = self.process
        if process is None or process.is_alive():
            return None
        reason = self.exit_reason()
        if not self.stopping:
            log.warning("%s pid %s: %s", self.name, self.pid, reason)
        self._forget()
        return reason

    def exit_reason(self) -> str:
        code = self.process.exitcode if self.process is not None else None
        if code is None:
            return "still running"
        if code < 0:
            name = signal.Signals(-code).name
            hint = " (killed: out of memory?)" if -code == signal.SIGKILL else ""
            return f"worker died from {name}{hint}"
        return f"worker exited with code {code}"

    # --- talk -----------------------------------------------------------------
    def send(self, message: Order) -> bool:
        """To the child, started first if none runs, without waiting for it to read; False when it cannot take
        it (it died, or OUTBOX_LIMIT orders wait already)."""
        if self.process is None:
            self.start()
        assert self._outbox is not None
        return self._outbox.put(message)

    def receive(self) -> list[Report]:
        messages: list[Report] = []
        if self._conn is None:
            return messages
        try:
            while self._conn.poll():
                messages.append(self._conn.recv())
        except (EOFError, OSError):
            pass
        if messages:
            self.last_heard = time.time()
        return messages

    # --- ends -----------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL to its whole process group (ranks and helpers it started die with it)."""
        if self.process is None:
            return
        self.stopping = True
        try:
            os.killpg(self.process.pid or 0, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError, ValueError):
                self.process.kill()
        self.process.join(5)

    def abandon(self) -> None:
        """Kill it and close the pipe: nothing it would still say matters (the daemon starts over from disk)."""
        self.kill()
        self._forget()

    def shutdown(self, timeout: float = RETIRE_SECONDS) -> None:
        """Ask it to exit and wait; kill it if it does not."""
        if self.process is not None:
            self.stopping = True
            self.send(Shutdown())
            self.process.join(timeout)
            if self.process.is_alive():
                log.warning("%s %s did not exit in %.0fs; killing it", self.name, self.pid, timeout)
                self.kill()
            self._forget()

    def _forget(self) -> None:
        if self._outbox is not None:
            self._outbox.close()
        if self._conn is not None:
            self._conn.close()
        self.process, self._conn, self._outbox, self.pid = None, None, None, None


class Child(Protocol):
    """What the daemon's parts need of a child: a `ChildHandle`, or a test's stand-in speaking the protocol."""

    pid: int | None
    last_heard: float
    stopping: bool

    def send(self, message: Order) -> bool: ...
    def receive(self) -> list[Report]: ...
    def alive(self) -> bool: ...
    def exit_reason(self) -> str: ...
    def kill(self) -> None: ...
    def abandon(self) -> None: ...
    def shutdown(self, timeout: float = RETIRE_SECONDS) -> None: ...

"""A child's end of the pipe to the daemon (`Link`), and the step gate tests hold a training worker with.

The training loop reads yields and asks only at a step boundary (`poll`); any other order waits for
the loop (`next_order`). Helper children read their orders in turn (`orders`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TypeVar

from finetuned.processes.protocol import Ask, Order, Report, Shutdown, Yield

# Tests hold the worker at a known step: a file holding a step number N lets it finish steps up to
# N and then wait at that boundary (still reading orders) until the number grows or the file goes.
GATE_ENV = "FINETUNED_STEP_GATE"
GATE_POLL_SECONDS = 0.02

OrderT = TypeVar("OrderT")


class Link:
    """`parent_pid`: the process whose death ends this one (the daemon, or a group's agent); None where
    another supervisor ends it (Ray ends a run's actors with its driver)."""

    def __init__(self, conn: Connection, parent_pid: int | None) -> None:
        self.conn = conn
        self.parent_pid = parent_pid
        self.held: list[Order] = []
        self.boundary: list[Yield | Ask] = []  # read, for the loop's next step boundary
        gate = os.environ.get(GATE_ENV)
        self.gate = Path(gate) if gate else None

    def send(self, message: Report) -> None:
        self.conn.send(message)

    def orders(self, kind: type[OrderT]) -> Iterator[OrderT]:
        """A helper's orders, until the daemon sends anything else (Shutdown) or goes."""
        while True:
            try:
                order = self.conn.recv()
            except (EOFError, OSError):
                return
            if not isinstance(order, kind):
                return
            yield order

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

    def yield_waiting(self) -> bool:
        """Whether a yield came that the loop's next step boundary will take (read now, left for it)."""
        self._drain()
        return any(isinstance(order, Yield) for order in self.boundary)

    def check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            os._exit(0)  # the daemon is gone: never train unsupervised

    def _read(self) -> Yield | Ask | None:
        self._drain()
        return self.boundary.pop(0) if self.boundary else None

    def _drain(self) -> None:
        self.check_parent()
        while self.conn.poll():
            order = self.conn.recv()
            if isinstance(order, Yield | Ask):
                self.boundary.append(order)
            else:
                self.held.append(order)  # a train or shutdown order waits for the loop

    def _gated(self, step: int) -> bool:
        if self.gate is None:
            return False
        try:
            return step >= int(self.gate.read_text().strip())
        except (OSError, ValueError):
            return False

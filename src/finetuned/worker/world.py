"""Where a job trains: the device, this process's rank among the ranks, and the line to the daemon.

The recipe never asks who it is: it asks the world. One rank (the main one)
reads the daemon's orders and reports back; every rank gets the same order at
the same step boundary, so all of them yield together. Today's world is one
process (`Solo`); a world of several ranks implements the same three calls.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from finetuned.worker.protocol import Ask, Report, Yield


def best_device() -> torch.device:
    """A GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class World(Protocol):
    device: torch.device
    rank: int
    size: int

    @property
    def main(self) -> bool:
        """The rank that talks to the daemon and writes the job's files."""
        ...

    def order(self, step: int) -> Yield | Ask | None:
        """The daemon's order at this step boundary (after `step` steps), the same on every rank: a yield,
        or a question for the live model (the loop answers it and asks again), or None: train on."""
        ...

    def report(self, message: Report) -> None:
        """Tell the daemon (the main rank speaks; the others stay silent)."""
        ...


class Solo:
    """One process on one device; `poll` and `send` are its end of the daemon's pipe."""

    rank = 0
    size = 1

    def __init__(self, send: Callable[[Report], None], poll: Callable[[int], Yield | Ask | None],
                 device: torch.device | None = None) -> None:
        self._send = send
        self._poll = poll
        self.device = device or best_device()

    @property
    def main(self) -> bool:
        return True

    def order(self, step: int) -> Yield | Ask | None:
        return self._poll(step)

    def report(self, message: Report) -> None:
        self._send(message)

"""Where a job trains: the device, this process's rank among the ranks, and the line to the daemon.

The recipe never asks who it is: it asks the world. One rank (the main one)
reads the daemon's orders, reports back and writes the job's files; every rank
gets the same order at the same step boundary, so all of them yield together.
`Solo` is one process; `worker/ranks.py` is a group of processes under
torch.distributed. Both answer the same calls, so the loop is the same:

- `rank`, `size`: which part of each micro-batch this rank trains (data/loader.py `part`);
- `sync_gradients(params)`: every rank ends with the gradient of the whole step;
- `total(values)`: sums across ranks (the step's loss is a sum over its units);
- `gather(value)`, `from_main(fn)`, `barrier()`: agreeing on what only one rank knows;
- `prepare(model)`, `runner(model, objective)`, `sharded`: where the weights live. With
  `sharded` (strategy fsdp, worker/sharded.py) each rank holds a part of them: the step runs
  through the sharded root, and checkpoints are written by every rank.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import torch

from finetuned.processes.protocol import Ask, Report, Yield
from finetuned.worker.objectives import Objective

T = TypeVar("T")


def best_device() -> torch.device:
    """A GPU when there is one, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_gb(device: torch.device) -> dict[str, float]:
    """This process's resident memory and, on a GPU, the most the device held for it, in GB."""
    import psutil

    used = {"ram": round(psutil.Process().memory_info().rss / 2**30, 3)}
    if device.type == "cuda":
        used["device_peak"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 3)
    return used


class World(Protocol):
    device: torch.device
    rank: int
    size: int
    sharded: bool  # each rank holds a part of the weights (strategy fsdp), not all of them

    @property
    def main(self) -> bool:
        """The rank that talks to the daemon and writes the job's files."""
        ...

    def order(self, step: int) -> Yield | Ask | None:
        """The daemon's order at this step boundary (after `step` steps), the same on every rank: a yield,
        or None: train on; or, on the main rank alone, a question for the live model (the loop answers it
        and asks again)."""
        ...

    def report(self, message: Report) -> None:
        """Tell the daemon (the main rank speaks; the others stay silent)."""
        ...

    def yield_waiting(self) -> bool:
        """On the main rank: whether the daemon asked for a yield the next boundary will take (it stays there).
        Work between steps (an evaluation round) gives way to it."""
        ...

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum the gradients over the ranks, so every rank steps with the gradient of the whole batch."""
        ...

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum of `values` over the ranks."""
        ...

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        ...

    def from_main(self, fn: Callable[[], T]) -> T:
        """`fn()` run on the main rank alone, its result handed to every rank (for files only it writes)."""
        ...

    def barrier(self) -> None:
        """Wait until every rank is here."""
        ...

    def prepare(self, model: torch.nn.Module) -> None:
        """Ready a freshly loaded model for this world (sharded: split its weights over the ranks, in place)."""
        ...

    def runner(self, model: torch.nn.Module, objective: Objective) -> tuple[torch.nn.Module, Objective]:
        """The module and objective a step computes the loss with: the model's own, or its sharded root's."""
        ...


class Solo:
    """One process on one device; `poll` and `send` are its end of the daemon's pipe."""

    rank = 0
    size = 1
    sharded = False

    def __init__(self, send: Callable[[Report], None], poll: Callable[[int], Yield | Ask | None],
                 device: torch.device | None = None, waiting: Callable[[], bool] = lambda: False) -> None:
        self._send = send
        self._poll = poll
        self._waiting = waiting
        self.device = device or best_device()

    @property
    def main(self) -> bool:
        return True

    def order(self, step: int) -> Yield | Ask | None:
        return self._poll(step)

    def report(self, message: Report) -> None:
        self._send(message)

    def yield_waiting(self) -> bool:
        return self._waiting()

    def sync_gradients(self, params: Sequence[torch.nn.Parameter]) -> None:
        return None

    def total(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def gather(self, value: T) -> list[T]:
        return [value]

    def from_main(self, fn: Callable[[], T]) -> T:
        return fn()

    def barrier(self) -> None:
        return None

    def prepare(self, model: torch.nn.Module) -> None:
        return None

    def runner(self, model: torch.nn.Module, objective: Objective) -> tuple[torch.nn.Module, Objective]:
        return model, objective

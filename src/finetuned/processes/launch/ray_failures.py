"""The failures Ray Train's controller sees, passed to the group's agent so the daemon can show why it restarted.

A `UserCallback` runs in the controller (an actor, maybe on another node), not in the agent: it puts a
line per failure into a Ray queue the agent created, and the agent reads them when the new rank 0
connects (processes/launch/ray.py). Kept apart from ray.py because Ray must be importable to define it.
"""

from __future__ import annotations

from typing import Any

from ray.train import UserCallback


class Failures(UserCallback):
    def __init__(self, queue: Any) -> None:
        self.queue = queue

    def after_exception(self, run_context: Any, worker_exceptions: dict[int, Exception]) -> None:
        for rank, error in sorted(worker_exceptions.items()):
            self.queue.put(f"rank {rank}: {describe(error)}")


def describe(error: Exception) -> str:
    """The first line of Ray's error, and how the worker died when Ray says so."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    death = next((line for line in lines if line.startswith("The actor is dead because")), None)
    text = lines[0] + (f" {death.split(' Some common causes')[0]}" if death else "")
    return text[:300]

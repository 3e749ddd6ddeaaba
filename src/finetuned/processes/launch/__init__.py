"""How a training worker is launched: one process, or a group of ranks started by torchrun or Ray Train.

A launcher is one module with one object here in `LAUNCHERS`, under the name `distributed.launcher`
takes in config.json. The daemon asks it for the training child (`child`), the doctor whether it can
train here (`problems`), and the status how many ranks a job trains on (`world_size`); a group's
agent, a child of the daemon, asks it to run the ranks (`run`). Nothing else names a launcher.
"""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Protocol

from finetuned.config import DistributedSettings
from finetuned.processes.launch.ray import OnRay
from finetuned.processes.launch.solo import Solo
from finetuned.processes.launch.torchrun import Torchrun

if TYPE_CHECKING:
    from finetuned.processes.handle import ChildHandle
    from finetuned.workspace import Workspace

Problem = tuple[str, str]  # (OK | WARN | FAIL, one line), as `finetuned doctor` prints it


class Launcher(Protocol):
    name: str

    def world_size(self, settings: DistributedSettings) -> int:
        """How many ranks a job trains on."""
        ...

    def child(self, ws_root: str, settings: DistributedSettings) -> ChildHandle:
        """The daemon's training child, started: the worker itself, or the agent of a group."""
        ...

    def problems(self, ws: Workspace, settings: DistributedSettings) -> Problem:
        """Whether jobs can train this way here (the devices, the cluster), without changing anything."""
        ...

    def run(self, daemon: Connection, ws: Workspace, settings: DistributedSettings) -> int:
        """In the group's agent: start the ranks, relay the daemon's pipe to rank 0, return the exit code."""
        ...


LAUNCHERS: dict[str, Launcher] = {"none": Solo(), "torchrun": Torchrun(), "ray": OnRay()}


def launcher_for(settings: DistributedSettings) -> Launcher:
    return LAUNCHERS[settings.launcher]

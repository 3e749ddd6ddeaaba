"""`distributed.launcher: none`: the training worker is one process, the daemon's child."""

from __future__ import annotations

from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

from finetuned.config import DistributedSettings
from finetuned.processes.handle import ChildHandle

if TYPE_CHECKING:
    from finetuned.workspace import Workspace

WORKER = "finetuned.worker.main"


class Solo:
    name = "none"

    def world_size(self, settings: DistributedSettings) -> int:
        return 1

    def child(self, ws_root: str, settings: DistributedSettings) -> ChildHandle:
        return ChildHandle(ws_root, WORKER, "training worker", lazy=False)

    def problems(self, ws: Workspace, settings: DistributedSettings) -> tuple[str, str]:
        return "OK", "one process (distributed.launcher none)"

    def run(self, daemon: Connection, ws: Workspace, settings: DistributedSettings) -> int:
        raise RuntimeError("one process has no group to run: the daemon starts the worker itself")

"""A child process's side of its life: detached from the terminal, dead with its parent, serving orders.

Every child the daemon starts (the training worker or a group's agent, the preparer, the model
checker, the answerer) is spawned into `main` with the name of its module: `run` detaches it
(its own process group, Ctrl+C ignored: the daemon decides how to stop), asks the kernel to kill it
when the parent dies (training never goes on unsupervised), sets up its logging, says `Ready` and
hands the pipe to the module's `serve(ws, link, *extra)`. A child program is that one function.
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING

from finetuned.processes.link import Link
from finetuned.processes.protocol import Ready

if TYPE_CHECKING:
    from finetuned.workspace import Workspace

Serve = Callable[..., None]  # serve(ws: Workspace, link: Link, *extra: str)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        # Where prctl is missing, the getppid() check of Link.check_parent still catches a dead parent.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def detach(parent_pid: int) -> bool:
    """Own process group, Ctrl+C ignored, killed with the parent; False when the parent is gone already."""
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    return os.getppid() == parent_pid


def entry(name: str) -> Callable[..., None]:
    """`module` or `module:function` (default `serve`), imported now: how children and ranks are named."""
    module, _, function = name.partition(":")
    return getattr(importlib.import_module(module), function or "serve")


def main(name: str, conn: Connection, ws_root: str, parent_pid: int, *extra: str) -> None:
    """The spawned process's target: the child program `name` (see `entry`)."""
    if not detach(parent_pid):
        return
    run(conn, ws_root, parent_pid, entry(name), *extra)


def run(conn: Connection, ws_root: str, parent_pid: int, serve: Serve, *extra: str) -> None:
    """Logging to the workspace's training log, `Ready`, then `serve` until it returns."""
    from finetuned.logs import route_library_output, setup_logging
    from finetuned.workspace import Workspace

    ws: Workspace = Workspace(Path(ws_root))
    setup_logging(ws, "training", stream=False)
    route_library_output()
    link = Link(conn, parent_pid)
    link.send(Ready(pid=os.getpid()))
    serve(ws, link, *extra)

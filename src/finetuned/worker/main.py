"""The worker process: started by the daemon, dies with it, trains what it is told.

It runs in its own process group and ignores Ctrl+C (the daemon decides how to
stop), and asks the kernel to kill it when the daemon dies, so training never
goes on unsupervised.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import traceback
from multiprocessing.connection import Connection
from pathlib import Path

from finetuned.worker.protocol import Message, msg

log = logging.getLogger("finetuned.worker")

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        # Where prctl is missing, the getppid() check in poll() still catches a dead daemon.
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _setup_logging(ws_root: Path) -> None:
    from finetuned.logs import setup_logging

    setup_logging(ws_root, "training", stream=False)


def main(conn: Connection, ws_root: str, parent_pid: int) -> None:
    os.setpgrp()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    if os.getppid() != parent_pid:  # the daemon died before the kernel could be told
        return
    root = Path(ws_root)
    _setup_logging(root)

    from finetuned.config import Config
    from finetuned.worker.recipe import Recipe
    from finetuned.workspace import Workspace

    held: list[Message] = []

    def send(message: Message) -> None:
        conn.send(message)

    def poll() -> Message | None:
        if os.getppid() != parent_pid:
            os._exit(0)
        while conn.poll():
            message = conn.recv()
            if message["type"] == "yield":
                return message
            held.append(message)  # a train or shutdown order waits for the loop below
        return None

    recipe = Recipe(Workspace(root), send, poll)
    send(msg("ready", pid=os.getpid()))
    while True:
        try:
            message = held.pop(0) if held else conn.recv()
        except (EOFError, OSError):
            return
        kind = message["type"]
        if kind == "shutdown":
            return
        if kind == "yield":
            continue  # nothing is training: nothing to yield
        if kind == "train":
            job_id = message["job_id"]
            try:
                config = Config.model_validate(message["config"])
                recipe.run(job_id, Path(message["file"]), config, set(message.get("line_exclude", [])),
                           message.get("sha256"))
            except Exception as exc:  # a crash of one job must reach the daemon as that job's failure
                log.exception("job %s crashed", job_id)
                recipe.loaded = None  # its state is unknown now: reload before the next job
                send(msg("failed", job_id=job_id, step=None, data_error=None,
                         reason=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()))

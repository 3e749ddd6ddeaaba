"""finetuned cancel / front (and retry's path): change the queue, through the daemon when it runs."""

from __future__ import annotations

from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.fsio import atomic_write_json
from finetuned.lock import AlreadyRunning, WorkspaceLock
from finetuned.logs import setup_logging
from finetuned.queue import actions
from finetuned.queue.render import queue_document
from finetuned.queue.status_files import document
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

CANCEL_HELP = """Remove a queued job from the queue; its file goes to data/skipped/.

The job in training is not cancelled: skip it (finetuned skip).

examples:
  finetuned cancel 20251116_014600
"""

FRONT_HELP = """Move a queued job to the front of its priority class.

examples:
  finetuned front 20251116_014600
"""


def queue_action(ws: Workspace, action: str, job_id: str, fresh_config: bool = False) -> None:
    """Apply a queue change through the running daemon, or directly under the lock when none runs."""
    try:
        with WorkspaceLock(ws.lock_file):
            setup_logging(ws, "daemon", stream=False)  # no daemon to log it: the change goes in its log all the same
            store = JobStore(ws).load()
            store.recover()
            message = actions.apply(store, action, job_id, fresh_config)
            atomic_write_json(ws.queue_json, document(queue_document(store.active(), None, None)))  # no daemon to do it
    except AlreadyRunning:
        request_id = actions.submit(ws, action, job_id, fresh_config)
        reply = actions.wait_reply(ws, request_id)
        if reply is None:
            fail("the daemon did not answer within 15 s; the request stays in control/requests/")
        if not reply["ok"]:
            fail(reply["message"])
        message = reply["message"]
    console.print(message)


def cancel(job_id: Annotated[str, typer.Argument(help="The queued job's id.")], root: RootOption = None) -> None:
    queue_action(workspace(root), "cancel", job_id)


def front(job_id: Annotated[str, typer.Argument(help="The queued job's id.")], root: RootOption = None) -> None:
    queue_action(workspace(root), "front", job_id)

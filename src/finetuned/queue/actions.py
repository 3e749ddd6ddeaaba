"""Changes to the queue that a user asks for: cancel a job, move one to the front, retry a failed one.

The daemon owns `data/queued/`, so while it runs these go through it as request
files (`control/requests/ID.json`, answered by `ID.reply.json`); with no daemon
running, the caller takes the workspace lock and applies them directly. Both
paths call `apply`, so they cannot disagree.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from finetuned.errors import FinetunedError
from finetuned.fsio import atomic_write_json, read_json, remove_file
from finetuned.queue.endings import Endings
from finetuned.queue.job import JobStatus
from finetuned.queue.store import JobNotFound, JobStore
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

ACTIONS = ("cancel", "front", "retry")


class ActionError(FinetunedError):
    pass


def apply(store: JobStore, action: str, job_id: str, fresh_config: bool = False) -> str:
    """Do it; return one line saying what happened, or raise ActionError. `fresh_config` (retry): the job
    starts over with config.json as it is now instead of resuming with the settings it started with."""
    try:
        job = store.get(job_id)
    except JobNotFound as exc:
        raise ActionError(str(exc)) from None
    if action == "cancel":
        if job.status != JobStatus.QUEUED:
            hint = " (use skip for the job in training)" if job.status.active else ""
            raise ActionError(f"job {job_id} is {job.status.value}, not queued{hint}")
        Endings(store).cancelled(job)
        return f"job {job_id} cancelled; {job.file} is in data/skipped/"
    if action == "front":
        if job.status != JobStatus.QUEUED:
            raise ActionError(f"job {job_id} is {job.status.value}, not queued")
        job.order = store.front_order(job.priority)
        store.save(job)
        return f"job {job_id} moved to the front of the {job.priority} queue"
    if action == "retry":
        if job.status != JobStatus.FAILED:
            raise ActionError(f"job {job_id} is {job.status.value}, not failed")
        failed_as = job.reason
        store.retry(job, fresh_config)
        if fresh_config:
            log.info("job %s: retried with config.json as it is now, from the start (it had failed: %s)",
                     job_id, failed_as)
            return (f"job {job_id} ({job.file}) is queued again; it starts over with config.json as it is now "
                    "(its earlier checkpoints and metrics are gone)")
        log.info("job %s: retried (it had failed: %s); queued again", job_id, failed_as)
        return f"job {job_id} ({job.file}) is queued again; it is checked like a new file"
    raise ActionError(f"unknown action '{action}' (known: {', '.join(ACTIONS)})")


def submit(ws: Workspace, action: str, job_id: str, fresh_config: bool = False) -> str:
    request_id = f"{time.strftime('%Y%m%d_%H%M%S')}_{uuid.uuid4().hex[:8]}"
    folder = ws.requests
    folder.mkdir(parents=True, exist_ok=True)
    request: dict[str, Any] = {"action": action, "job_id": job_id}
    if fresh_config:
        request["fresh_config"] = True
    atomic_write_json(folder / f"{request_id}.json", request)
    return request_id


def wait_reply(ws: Workspace, request_id: str, timeout: float = 15) -> dict[str, Any] | None:
    path = ws.requests / f"{request_id}.reply.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists():
            reply = read_json(path)
            remove_file(path)
            return reply
        time.sleep(0.05)
    return None


def pending(ws: Workspace) -> list[Path]:
    folder = ws.requests
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.glob("*.json") if not p.name.endswith(".reply.json"))


def answer(ws: Workspace, store: JobStore, path: Path, before_reply: Callable[[], None] = lambda: None) -> None:
    """The daemon's side: apply one request file and write its reply. `before_reply` runs in between (the
    daemon rewrites control/queue.json there), so whoever reads the reply reads a queue that shows it."""
    try:
        request = read_json(path)
        fresh = request.get("fresh_config") is True
        message, ok = apply(store, request["action"], request["job_id"], fresh), True
    except (ActionError, KeyError, ValueError, TypeError) as exc:
        message, ok = str(exc), False
    before_reply()
    atomic_write_json(path.with_name(path.stem + ".reply.json"), {"ok": ok, "message": message})
    remove_file(path)

"""The queue, and the two changes a user can ask of it: cancel a queued job, move one to the front.

Both go through the daemon as request files (`finetuned.queue.actions`), exactly as the
CLI's do while a daemon runs: the daemon owns the job store, the monitor never writes it.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path

from finetuned.fsio import remove_file
from finetuned.monitor.deps import FilesDep, Guarded, SettingsDep
from finetuned.monitor.files import JOB_ID
from finetuned.monitor.schemas import ActionResult
from finetuned.monitor.views import daemon_view, queue_view
from finetuned.queue import actions

router = APIRouter(prefix="/api/queue", tags=["queue"], dependencies=Guarded)

JobId = Annotated[str, Path(pattern=JOB_ID.pattern, description="a job id, YYYYMMDD_HHMMSS[_N]")]
REPLY_SECONDS = 10.0


@router.get("")
async def queue(files: FilesDep) -> dict[str, Any]:
    """`control/queue.json` (SPEC section 3), each entry with its example count and the reason of its state."""
    return queue_view(files)


def _ask_daemon(files: FilesDep, settings: SettingsDep, action: Literal["cancel", "front"], job_id: str,
                ) -> ActionResult:
    if files.job(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    daemon = daemon_view(files.status(), settings, time.time())
    if not daemon["responding"]:
        raise HTTPException(503, f"{daemon['message']}; the queue can change only while it runs")
    request_id = actions.submit(files.ws, action, job_id)
    reply = actions.wait_reply(files.ws, request_id, REPLY_SECONDS)
    if reply is None:
        request = files.ws.requests / f"{request_id}.json"
        if request.exists():  # never taken: withdraw it, so it does not act later by surprise
            remove_file(request)
        raise HTTPException(504, f"the daemon did not answer within {REPLY_SECONDS:.0f} s")
    if not reply.get("ok"):
        raise HTTPException(409, str(reply.get("message")))
    return ActionResult(ok=True, action=action, job_id=job_id, message=str(reply.get("message")))


@router.post("/{job_id}/cancel", responses={404: {}, 409: {}, 503: {}, 504: {}})
def cancel(job_id: JobId, files: FilesDep, settings: SettingsDep) -> ActionResult:
    """Take a queued job out of the queue; its file goes to data/skipped/ (`finetuned cancel`)."""
    return _ask_daemon(files, settings, "cancel", job_id)


@router.post("/{job_id}/front", responses={404: {}, 409: {}, 503: {}, 504: {}})
def front(job_id: JobId, files: FilesDep, settings: SettingsDep) -> ActionResult:
    """Move a queued job to the front of its priority class."""
    return _ask_daemon(files, settings, "front", job_id)

"""Pause, resume, stop, skip: the same control files `finetuned pause` and a person's `touch` use."""

from __future__ import annotations

from fastapi import APIRouter

from finetuned.fsio import remove_file
from finetuned.monitor.deps import FilesDep, Guarded
from finetuned.monitor.schemas import ControlAction, ControlResult

router = APIRouter(prefix="/api/control", tags=["control"], dependencies=Guarded)

MESSAGES = {
    "pause": "pause requested: training stops at the next step boundary",
    "stop": "stop requested: the job is checkpointed and goes back to the queue",
    "skip": "skip requested: the job is abandoned (its checkpoint kept) and the next one starts",
}


@router.post("/{action}")
async def control(action: ControlAction, files: FilesDep) -> ControlResult:
    """Create (pause, stop, skip) or remove (resume) a file in control/; the daemon acts within one step."""
    ws = files.ws
    if action == "resume":
        paused = ws.pause_file.exists()
        remove_file(ws.pause_file)
        return ControlResult(ok=True, action=action, paused=False, message="resumed" if paused else "not paused")
    path = {"pause": ws.pause_file, "stop": ws.stop_file, "skip": ws.skip_file}[action]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return ControlResult(ok=True, action=action, paused=ws.pause_file.exists(), message=MESSAGES[action])

"""Pause, resume, stop, skip: the same control files `finetuned pause` and a person's `touch` use."""

from __future__ import annotations

from fastapi import APIRouter

from finetuned import controls
from finetuned.controls import Control
from finetuned.monitor.deps import FilesDep, Guarded
from finetuned.monitor.schemas import ControlAction, ControlResult

router = APIRouter(prefix="/api/control", tags=["control"], dependencies=Guarded)


@router.post("/{action}")
async def control(action: ControlAction, files: FilesDep) -> ControlResult:
    """Create (pause, stop, skip) or remove (resume) a file in control/; the daemon acts within one step."""
    ws = files.ws
    message = controls.resume(ws) if action == "resume" else controls.request(ws, Control(action))
    return ControlResult(ok=True, action=action, paused=controls.paused(ws), message=message)

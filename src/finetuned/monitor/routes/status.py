"""Status, health and the live event stream."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from finetuned.monitor.deps import FilesDep, Guarded, SettingsDep
from finetuned.monitor.routes.jobs import job_previews
from finetuned.monitor.views import health_view, status_view

router = APIRouter(prefix="/api", tags=["status"], dependencies=Guarded)


@router.get("/status")
async def status(files: FilesDep, settings: SettingsDep) -> dict[str, Any]:
    """The daemon's state and heartbeat age, the job now training with its rates and ETAs, queue counts."""
    return status_view(files, settings)


@router.get("/health")
async def health(files: FilesDep) -> dict[str, Any]:
    """RAM, disk and CPU as the daemon last measured them, and the GPUs when NVML is available."""
    return health_view(files)


@router.get("/previews")
async def previews(files: FilesDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> dict[str, Any]:
    """Previews of the job now training, or of the latest job that has any."""
    job = files.training_job_id()
    if job is None or files.job(job) is None:
        with_previews = [j["id"] for j in files.jobs() if files.previews(j["id"])]
        if not with_previews:
            return {"job_id": None, "rounds": [], "exact_match": []}
        job = with_previews[-1]
    return await job_previews(job, files, limit)


@router.get("/events", response_class=StreamingResponse, responses={200: {
    "content": {"text/event-stream": {"schema": {"type": "string"}}}, "description": "an endless event stream"}})
async def events(request: Request) -> StreamingResponse:
    """Server-sent events: `status`, `queue`, `metrics`, `previews`, `health`, `jobs`, `asks`, each when its files
    change.

    The first events after (re)connecting are a full snapshot (the current job's metrics
    history in columns), so a reconnecting page needs no `Last-Event-ID` replay. A page
    that goes away simply ends its stream.
    """
    # A plain stream of bytes the shared producer encoded once (monitor/events.py): a page that
    # disconnects ends it, with nothing in flight to break.
    return StreamingResponse(request.app.state.events.stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

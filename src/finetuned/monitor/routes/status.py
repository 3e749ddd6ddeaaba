"""Status, health and the live event stream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.sse import EventSourceResponse, ServerSentEvent

from finetuned.monitor.deps import FilesDep, Guarded, SettingsDep
from finetuned.monitor.events import EventWatcher
from finetuned.monitor.routes.jobs import job_previews
from finetuned.monitor.views import health_view, status_view

router = APIRouter(prefix="/api", tags=["status"], dependencies=Guarded)

# Files are polled this often per connected page (a stat of a handful of files): often enough
# for "within a second", rarely enough that a page never competes with training for a core.
POLL_SECONDS = 0.5


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
    job = ((files.training() or {}).get("job") or {}).get("id")
    if not isinstance(job, str) or files.job(job) is None:
        with_previews = [j["id"] for j in files.jobs() if files.previews(j["id"])]
        if not with_previews:
            return {"job_id": None, "rounds": [], "exact_match": []}
        job = with_previews[-1]
    return await job_previews(job, files, limit)


@router.get("/events", response_class=EventSourceResponse)
async def events(request: Request, files: FilesDep, settings: SettingsDep) -> AsyncIterable[ServerSentEvent]:
    """Server-sent events: `status`, `queue`, `metrics`, `previews`, `health`, `jobs`, `asks`, each when its files
    change.

    The first events after (re)connecting are a full snapshot, so a reconnecting page
    needs no `Last-Event-ID` replay.
    """
    watcher = EventWatcher(files, settings)
    stopping = request.app.state.stopping
    yield ServerSentEvent(event="hello", data={"now": time.time()}, retry=2000)
    while not stopping.is_set():
        for name, payload in watcher.changes():
            yield ServerSentEvent(event=name, data=payload, id=watcher.next_id())
        await asyncio.sleep(POLL_SECONDS)

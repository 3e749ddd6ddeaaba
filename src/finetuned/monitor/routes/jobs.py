"""Jobs: the history, one job's record, its metrics and its previews; and the model line across jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from finetuned.config import redacted
from finetuned.monitor.deps import FilesDep, Guarded
from finetuned.monitor.routes.queue import JobId
from finetuned.monitor.views import downsample, job_summary, line_history
from finetuned.queue.job import JobStatus

router = APIRouter(prefix="/api/jobs", tags=["jobs"], dependencies=Guarded)
line_router = APIRouter(prefix="/api/metrics", tags=["metrics"], dependencies=Guarded)

MaxPoints = Annotated[int, Query(ge=10, le=100_000, description="at most this many points, evenly thinned")]
Status = Annotated[JobStatus | None, Query(description="only jobs in this state")]


@router.get("")
async def jobs(files: FilesDep, status: Status = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
               ) -> list[dict[str, Any]]:
    """Every job, newest first, without its bulky parts; failed ones with their error report."""
    records = [j for j in files.jobs() if status is None or j.get("status") == status.value]
    return [job_summary(files, j) for j in reversed(records[-limit:])]


@router.get("/{job_id}", responses={404: {}})
async def job(job_id: JobId, files: FilesDep) -> dict[str, Any]:
    """The job's full record (runs, history, summary), its adapter's job.json and its error report."""
    record = files.job(job_id)
    if record is None:
        raise HTTPException(404, f"no job {job_id}")
    # Records written before secrets were redacted still hold them: never sent.
    return redacted({**job_summary(files, record), "record": record, "adapter_record": files.adapter_record(job_id)})


@router.get("/{job_id}/metrics", responses={404: {}})
async def job_metrics(job_id: JobId, files: FilesDep, max_points: MaxPoints = 4000,
                      since_step: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """One line per logged step (step, line_step, loss, lr, tokens, step_seconds, time, val_loss when measured)."""
    if files.job(job_id) is None and not files.ws.metrics_file(job_id).exists():
        raise HTTPException(404, f"no job {job_id}")
    points = [p for p in files.metrics(job_id) if p["step"] > since_step]
    return {"job_id": job_id, "total": len(points), "points": downsample(points, max_points)}


@router.get("/{job_id}/previews", responses={404: {}})
async def job_previews(job_id: JobId, files: FilesDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
                       ) -> dict[str, Any]:
    """The job's preview rounds: prompts, expected and model answers, exact-match rate per round."""
    if files.job(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    rounds = files.previews(job_id)
    return {"job_id": job_id, "rounds": rounds[-limit:],
            "exact_match": [{"step": r["step"], "exact_match": r.get("exact_match")} for r in rounds]}


@line_router.get("/line")
async def metrics_line(files: FilesDep, max_points: MaxPoints = 4000) -> dict[str, Any]:
    """The model line: every job's losses on one step axis, with where each job begins and ends."""
    return line_history(files, max_points)

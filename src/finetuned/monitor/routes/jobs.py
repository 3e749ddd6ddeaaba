"""Jobs: the history, one job's record, its metrics and its previews; and the model line across jobs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from finetuned.monitor.deps import FilesDep, Guarded
from finetuned.monitor.routes.queue import JobId
from finetuned.monitor.views import downsample, job_summary, line_history

router = APIRouter(prefix="/api", tags=["jobs"], dependencies=Guarded)

MaxPoints = Annotated[int, Query(ge=10, le=100_000, description="at most this many points, evenly thinned")]
Status = Annotated[str | None, Query(pattern="^(queued|training|paused|completed|failed|skipped)$")]


@router.get("/jobs")
async def jobs(files: FilesDep, status: Status = None, limit: Annotated[int, Query(ge=1, le=10_000)] = 200,
               ) -> list[dict[str, Any]]:
    """Every job, newest first, without its bulky parts; failed ones with their error report."""
    records = [j for j in files.jobs() if status is None or j.get("status") == status]
    return [job_summary(files, j) for j in reversed(records[-limit:])]


@router.get("/jobs/{job_id}", responses={404: {}})
async def job(job_id: JobId, files: FilesDep) -> dict[str, Any]:
    """The job's full record (runs, history, summary), its adapter's job.json and its error report."""
    record = files.job(job_id)
    if record is None:
        raise HTTPException(404, f"no job {job_id}")
    return {**job_summary(files, record), "record": record, "adapter_record": files.adapter_record(job_id)}


@router.get("/jobs/{job_id}/metrics", responses={404: {}})
async def job_metrics(job_id: JobId, files: FilesDep, max_points: MaxPoints = 4000,
                      since_step: Annotated[int, Query(ge=0)] = 0) -> dict[str, Any]:
    """One line per logged step (step, line_step, loss, lr, tokens, step_seconds, time, val_loss when measured)."""
    if files.job(job_id) is None and not files.ws.metrics_file(job_id).exists():
        raise HTTPException(404, f"no job {job_id}")
    points = [p for p in files.metrics(job_id) if p["step"] > since_step]
    return {"job_id": job_id, "total": len(points), "points": downsample(points, max_points)}


@router.get("/jobs/{job_id}/previews", responses={404: {}})
async def job_previews(job_id: JobId, files: FilesDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
                       ) -> dict[str, Any]:
    """The job's preview rounds: prompts, expected and model answers, exact-match rate per round."""
    if files.job(job_id) is None:
        raise HTTPException(404, f"no job {job_id}")
    rounds = files.previews(job_id)
    return {"job_id": job_id, "rounds": rounds[-limit:],
            "exact_match": [{"step": r["step"], "exact_match": r.get("exact_match")} for r in rounds]}


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


@router.get("/metrics/line")
async def metrics_line(files: FilesDep, max_points: MaxPoints = 4000) -> dict[str, Any]:
    """The model line: every job's losses on one step axis, with where each job begins and ends."""
    return line_history(files, max_points)

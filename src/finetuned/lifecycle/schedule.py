"""When the daemon should consolidate on its own: `lifecycle.consolidate.every_jobs` or `.daily_at`."""

from __future__ import annotations

from datetime import datetime

from finetuned.config import Config
from finetuned.lifecycle.history import line_started, read_history
from finetuned.lifecycle.line import unfinished
from finetuned.lifecycle.records import list_adapters
from finetuned.lifecycle.versions import list_versions
from finetuned.workspace import Workspace


def consolidation_due(ws: Workspace, config: Config, now: datetime | None = None) -> str | None:
    """Why a consolidation is due now (a line for the log), or None.

    Never due without an adapter on the current base, finished since it became current, whose
    training no version holds yet, nor while a job is part-way through training on it (its steps would be left out).
    """
    schedule = config.lifecycle.consolidate
    if not schedule.every_jobs and not schedule.daily_at:
        return None
    now = now or datetime.now()
    consolidated = [float(e["unix"]) for e in read_history(ws) if e.get("action") == "consolidate"]
    merged = {j.get("job_id") for v in list_versions(ws) for j in v.jobs}  # in continuous mode, a whole line
    since = line_started(ws) or 0.0
    fresh = [a for a in list_adapters(ws)
             if a.base_model == config.base_model and a.finished > since and a.job_id not in merged]
    if not fresh or unfinished(ws, config.base_model):
        return None
    if schedule.every_jobs and len(fresh) >= schedule.every_jobs:
        return f"{len(fresh)} job(s) completed since the last version (lifecycle.consolidate.every_jobs)"
    if schedule.daily_at:
        hour, minute = (int(part) for part in schedule.daily_at.split(":"))
        today_at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
        if now >= today_at and max(consolidated, default=0.0) < today_at.timestamp():
            return f"daily at {schedule.daily_at} (lifecycle.consolidate.daily_at)"
    return None

"""What the page shows, derived from the daemon's files: liveness, rates, ETAs, histories.

Pure functions of what `Files` reads, so the API, the event stream and /metrics agree. The
daemon's state files come as their models (`queue/status_files.py`); what the page shows is built
from their fields, never from config.json: a figure that depends on the settings (a job's own may
differ from the workspace's) is published by the daemon, which knows which settings are in use.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from datetime import datetime
from typing import Any

import psutil

from finetuned import asks
from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files
from finetuned.monitor.gpu import gpu_info
from finetuned.overrides import flatten
from finetuned.queue.job import JobStatus
from finetuned.queue.render import human_duration
from finetuned.queue.status_files import StatusFile, TrainingJob, document

Point = dict[str, Any]
EVAL_PREFIX = "eval/"  # a suite's score in the metrics log: eval/SUITE


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def daemon_view(status: StatusFile | None, settings: MonitorSettings, now: float) -> dict[str, Any]:
    """The daemon's own status plus whether it still answers: the heartbeat is the only proof."""
    if status is None:
        return {"state": "unknown", "responding": False, "heartbeat_age": None,
                "message": "no status yet: the daemon has not written control/status.json"}
    view = document(status)
    beat = _number(status.heartbeat_unix)
    age = now - beat if beat is not None else None
    view["heartbeat_age"] = round(age, 1) if age is not None else None
    gone = status.pid != os.getpid() and not psutil.pid_exists(status.pid)
    if status.state == "stopped":
        view["responding"], view["message"] = False, "the daemon has stopped"
    elif age is None or age > settings.stale_after_seconds or gone:
        old = f"{age:.0f} s" if age is not None else "of unknown age"
        view["responding"], view["message"] = False, f"daemon not responding, data is {old} old"
    else:
        view["responding"], view["message"] = True, None
    return view


def seconds_per_step(job: TrainingJob, points: list[Point]) -> float | None:
    """From the daemon's ETA (a mean over recent steps) or, failing that, the logged step times."""
    eta, step, total = _number(job.eta_seconds), job.step, job.total_steps
    if eta and step is not None and total is not None and total > step:
        return eta / (total - step)
    recent = [s for p in points[-20:] if (s := _number(p.get("step_seconds"))) is not None]
    return sum(recent) / len(recent) if recent else None


def training_view(files: Files) -> dict[str, Any] | None:
    """The job now training (or paused), with its rates and latest metrics."""
    training = files.training()
    job = training.job if training is not None else None
    if job is None or files.training_job_id() is None:
        return None
    view = document(job)
    points = files.metrics(job.id)
    per_step = seconds_per_step(job, points)
    view["seconds_per_step"] = per_step
    view["steps_per_second"] = 1 / per_step if per_step else None
    if points:
        last = points[-1]
        view["tokens"], view["line_step"] = last.get("tokens"), last.get("line_step")
        # Logged steps of a job on several ranks carry their number and each rank's memory (worker/recipe.py).
        view["world_size"], view["rank_memory_gb"] = last.get("world_size", 1), last.get("rank_memory_gb")
        view.setdefault("loss", last.get("loss"))
        vals = [p for p in points if _number(p.get("val_loss")) is not None]
        view["val_loss"] = vals[-1]["val_loss"] if vals else None
        # An objective's own metrics (a preference job's rewards, accuracy, KL), as last logged.
        view["objective_metrics"] = {k: v for k, v in last.items()
                                     if ("/" in k or k == "kl") and not k.startswith(EVAL_PREFIX)}
        view["eval_scores"] = eval_scores(points)
    per_example = _number(job.examples_per_step)
    if view.get("examples_per_second") is None and per_step and per_example is not None:
        # Until the worker has measured a step (a resumed job): the daemon's examples per step at this pace.
        view["examples_per_second"] = per_example / per_step
    return view


def eval_scores(points: list[Point]) -> dict[str, float]:
    """Each suite's latest score (`eval/SUITE`): suites run at checkpoints, not at every step."""
    scores: dict[str, float] = {}
    for point in points:
        for key, value in point.items():
            if key.startswith(EVAL_PREFIX) and _number(value) is not None:
                scores[key.removeprefix(EVAL_PREFIX)] = value
    return scores


def queue_eta(files: Files, training: dict[str, Any] | None) -> tuple[float | None, bool]:
    """Seconds until the whole queue is trained, at the current job's pace; partial when sizes are unknown."""
    if not training or not training.get("seconds_per_step"):
        return None, False
    examples, total = training.get("examples"), training.get("total_steps")
    if not isinstance(examples, int) or not examples or not isinstance(total, int):
        return None, False
    steps_per_example = total / examples
    seconds = _number(training.get("eta_seconds")) or 0.0
    partial = False
    queue = files.queue()
    for entry in queue.queue if queue is not None else []:
        if entry.status != JobStatus.QUEUED:
            continue
        job = files.job(entry.id)
        size = job.get("examples") if job else None
        if isinstance(size, int):
            seconds += size * steps_per_example * training["seconds_per_step"]
        else:
            partial = True
    return seconds, partial


def status_view(files: Files, settings: MonitorSettings, now: float | None = None) -> dict[str, Any]:
    now = time.time() if now is None else now
    status = files.status()
    daemon = daemon_view(status, settings, now)
    training = training_view(files)
    eta_queue, partial = queue_eta(files, training)
    queue_status = files.queue_status()
    return {
        "now": now, "workspace": str(files.ws.root), "daemon": daemon, "training": training,
        "queue_status": document(queue_status) if queue_status is not None else None,
        "eta_queue_seconds": eta_queue, "eta_queue": human_duration(eta_queue), "eta_queue_partial": partial,
        "settings": {
            "stale_after_seconds": settings.stale_after_seconds, "max_upload_mb": settings.max_upload_mb,
            # As the daemon last published it (the job's own settings while one trains); None before it has.
            "preview_every_steps": status.preview_every_steps if status is not None else None,
        },
    }


def health_view(files: Files) -> dict[str, Any]:
    doc = files.health()
    view = document(doc) if doc is not None else {}
    gpus = view.get("gpu")
    if not (isinstance(gpus, list) and gpus and all(isinstance(g, dict) for g in gpus)):
        view["gpu"] = gpu_info()  # the daemon leaves it null on purpose: it never imports torch for this
    view["now"] = time.time()
    return view


def queue_view(files: Files) -> dict[str, Any]:
    doc = files.queue()
    view = document(doc) if doc is not None else {"queue": [], "current": None}
    entries = []
    for entry in view["queue"]:
        job = files.job(str(entry.get("id"))) or {}
        entries.append({**entry, "examples": job.get("examples"), "reason": job.get("reason", "")})
    view["queue"] = entries
    return view


# --- history ------------------------------------------------------------
def _parse_time(text: Any) -> float | None:
    try:
        return datetime.strptime(str(text), "%Y-%m-%d %H:%M:%S").timestamp()
    except ValueError:
        return None


def job_summary(files: Files, job: dict[str, Any]) -> dict[str, Any]:
    """One row of the history (or queue): the record without its bulky parts."""
    runs = job.get("runs") or []
    seconds = 0.0
    for run in runs:
        start, end = _parse_time(run.get("started")), _parse_time(run.get("ended"))
        if start is not None and end is not None:
            seconds += end - start
    summary = job.get("summary") or {}
    adapter = files.ws.adapter_dir(job["id"])
    keys = ("steps", "examples_trained", "tokens", "first_loss", "final_loss", "val_loss", "line_step", "mode")
    return {
        "id": job["id"], "file": job.get("file"), "priority": job.get("priority"), "status": job.get("status"),
        "added": job.get("added"), "examples": job.get("examples"), "format": job.get("format"),
        "step": job.get("step"), "total_steps": job.get("total_steps"), "reason": job.get("reason", ""),
        "warnings": job.get("warnings") or [],
        "runs": len(runs), "started": runs[0].get("started") if runs else None,
        "ended": runs[-1].get("ended") if runs else None, "train_seconds": seconds,
        "summary": {k: summary[k] for k in keys if k in summary},
        "adapter": str(adapter.relative_to(files.ws.root)) + "/" if adapter.is_dir() else None,
        "error": files.error_report(job),
        "settings": flatten(job["overrides"]) if isinstance(job.get("overrides"), dict) else {},
    }


def downsample(points: list[Point], max_points: int) -> list[Point]:
    """Every k-th point, keeping the last and every measurement (validation, suites): a 180k-step line
    stays drawable."""
    if len(points) <= max_points:
        return points
    stride = math.ceil(len(points) / max_points)
    last = len(points) - 1
    return [p for i, p in enumerate(points) if i % stride == 0 or i == last or _measured(p)]


def _measured(point: Point) -> bool:
    return "val_loss" in point or any(key.startswith(EVAL_PREFIX) for key in point)


def line_history(files: Files, max_points: int = 4000) -> dict[str, Any]:
    """Every job's metrics in training order, on one axis, with the jobs' boundaries.

    The axis is the model line's step counter when it only grows (continuous mode);
    otherwise (independent jobs each counting from 1, or skipped jobs left out of the
    line) the steps trained so far across all jobs.
    """
    jobs = {j["id"]: j for j in files.jobs()}
    rows: list[tuple[float, str, Point]] = []
    for job_id in files.metric_job_ids():
        rows += [(_number(p.get("time")) or 0.0, job_id, p) for p in files.metrics(job_id)]
    rows.sort(key=lambda r: (r[0], r[2]["step"]))
    line_steps = [r[2].get("line_step") for r in rows]
    by_line = all(isinstance(s, int) for s in line_steps) and all(a <= b for a, b in itertools.pairwise(line_steps))
    points: list[Point] = []
    segments: list[dict[str, Any]] = []
    x, last_step = 0, {}
    for _, job_id, p in rows:
        if by_line:
            x = p["line_step"]
        else:
            x += max(int(p["step"]) - last_step.get(job_id, 0), 1)
            last_step[job_id] = int(p["step"])
        if not segments or segments[-1]["job_id"] != job_id:
            job = jobs.get(job_id, {})
            segments.append({"job_id": job_id, "file": job.get("file"), "status": job.get("status"),
                             "start": x, "end": x})
        segments[-1]["end"] = x
        point = {"x": x, "loss": p.get("loss"), "job_id": job_id}
        if "val_loss" in p:
            point["val_loss"] = p["val_loss"]
        points.append(point)
    return {"axis": "line_step" if by_line else "steps", "points": downsample(points, max_points),
            "segments": segments, "total": len(points)}


def asks_view(files: Files, limit: int = 20) -> dict[str, Any]:
    """The Try it box: the newest questions with their answers, and how many more may be asked."""
    return {"asks": asks.recent(files.ws, limit), "pending": len(asks.pending(files.ws)),
            "max_pending": asks.MAX_PENDING}

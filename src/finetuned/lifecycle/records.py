"""What the workspace knows about finished training: job records and published adapters.

Read-only: unlike `JobStore.load()`, nothing here renames an unreadable record,
so `doctor` and `gc --dry-run` change nothing on disk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetuned.fsio import read_json
from finetuned.lifecycle.errors import LifecycleError
from finetuned.queue.job import Job
from finetuned.workspace import ADAPTER_RECORD, Workspace

log = logging.getLogger(__name__)

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"  # timestamps.now_text's format


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.mktime(datetime.strptime(text, TIME_FORMAT).timetuple())
    except ValueError:
        return None


def read_jobs(ws: Workspace) -> dict[str, Job]:
    """Every readable job record, by id; unreadable ones are logged and left where they are."""
    jobs: dict[str, Job] = {}
    if not ws.jobs.is_dir():
        return jobs
    for path in sorted(ws.jobs.glob("*.json")):
        try:
            job = Job.model_validate(read_json(path))
        except (OSError, ValueError, ValidationError) as exc:
            log.warning("unreadable job record %s: %s", path.name, exc)
            continue
        jobs[job.id] = job
    return jobs


@dataclass(frozen=True)
class Adapter:
    """A published `models/adapters/JOB_ID/`: the adapter (or, for full fine-tuning, a model) and its job.json."""

    job_id: str
    path: Path
    info: dict[str, Any]

    @property
    def base_model(self) -> str:
        return str(self.info.get("base_model") or "")

    @property
    def base_hash(self) -> str | None:
        return self.info.get("base_hash")

    @property
    def method(self) -> str:
        return str(self.info.get("method") or ("lora" if self.is_peft else "full"))

    @property
    def mode(self) -> str:
        return str(self.info.get("mode") or "continuous")

    @property
    def steps(self) -> int:
        return int(self.info.get("steps") or 0)

    @property
    def tokens(self) -> int:
        return int(self.info.get("tokens") or 0)

    @property
    def line_step(self) -> int:
        return int(self.info.get("line_step") or self.steps)

    @property
    def is_peft(self) -> bool:
        return (self.path / "adapter_config.json").exists()

    @property
    def finished(self) -> float:
        """When the job finished: the end of the second its last run ended in, else when job.json was written."""
        runs = self.info.get("runs") or []
        ended = parse_time(runs[-1].get("ended")) if runs else None
        return ended + 0.999 if ended is not None else (self.path / ADAPTER_RECORD).stat().st_mtime


def read_adapter(path: Path) -> Adapter | None:
    try:
        info = read_json(path / ADAPTER_RECORD)
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict):
        return None
    return Adapter(job_id=str(info.get("job_id") or info.get("id") or path.name), path=path, info=info)


def list_adapters(ws: Workspace) -> list[Adapter]:
    """Every published adapter, oldest job first; half-published folders (no job.json) are not adapters."""
    found = []
    if ws.adapters.is_dir():
        for path in sorted(ws.adapters.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            adapter = read_adapter(path)
            if adapter is not None:
                found.append(adapter)
    return found


def get_adapter(ws: Workspace, job_id: str) -> Adapter:
    adapter = read_adapter(ws.adapter_dir(job_id))
    if adapter is None:
        raise LifecycleError(f"no published adapter for job {job_id} (models/adapters/{job_id}/job.json)")
    return adapter


def data_entry(adapter: Adapter | None, job: Job | None, job_id: str) -> dict[str, Any]:
    """One job's contribution: the data file, its sha256, and what was trained on it."""
    info = adapter.info if adapter else {}
    summary = job.summary if job else {}
    return {
        "job_id": job_id,
        "file": info.get("file") or (job.file if job else None),
        "sha256": info.get("sha256") or (job.sha256 if job else None),
        "examples": info.get("examples_trained") or summary.get("examples_trained") or (job.examples if job else None),
        "steps": info.get("steps", summary.get("steps", job.step if job else None)),
        "tokens": info.get("tokens", summary.get("tokens")),
    }

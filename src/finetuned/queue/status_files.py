"""The status files' shapes: one pydantic model per file the daemon publishes for others to read.

`control/queue.json`, `control/status.json` and `status/{training,queue,system_health}_status.json`
(SPEC sections 1 and 3) are written through these models by `daemon/statefiles.py` and read through
them by the monitor and the CLI; their JSON schemas, generated from the same models, are published
in `docs/schemas/` for outside scripts (`python -m finetuned.queue.status_files docs/schemas`
rewrites them; `tests/queue/test_status_files.py` fails while they differ).

Why here, in the queue package and not beside `daemon/statefiles.py`: the monitor and the CLI read
these files, and the layers (docs/architecture.md) let them import the parts but not the daemon.
The files speak the queue's words (`JobStatus`, `Priority`, from `queue/job.py`), and
`queue/render.py` already renders `queue.json`, so the parts layer is the lowest place that has
them. Nothing here imports torch.

Field names and presence are exactly what the daemon always wrote: a key that was written only
sometimes (a queue entry's `settings`, the training job's progress) is a field with a default,
and a writer dumps with `exclude_unset`, so it is still absent rather than null when unknown.

Every model allows extra keys (`extra="allow"`), on read and in the schemas
(`additionalProperties: true`): SPEC says "more keys may be added", so a reader must not reject a
file from a newer daemon, and what it does not know it passes on unchanged (the monitor's API
returns the daemon's own keys). A file that is missing, unreadable, not JSON or of the wrong shape
reads as None, as it always has.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from finetuned.fsio import read_json
from finetuned.queue.job import JobStatus, Priority

M = TypeVar("M", bound=BaseModel)
SCHEMA_DRAFT = "https://json-schema.org/draft/2020-12/schema"


class _StatusFile(BaseModel):
    model_config = ConfigDict(extra="allow")


# --- control/queue.json (SPEC section 3) ---------------------------------------------------------
class QueueEntry(_StatusFile):
    """One job in the queue, in the order it will run."""

    id: str = Field(description="the job id, YYYYMMDD_HHMMSS[_N]")
    file: str = Field(description="the dropped file's name")
    priority: Priority
    size: str = Field(description='"N examples", or "checking" while the file is validated')
    added: str = Field(description="arrival time, YYYY-MM-DD HH:MM:SS")
    status: JobStatus
    settings: dict[str, Any] | None = Field(None, description="the file's own settings over config.json, as "
                                                               "dotted keys; absent when it has none")


class QueueCurrent(_StatusFile):
    """The job in the worker (training or paused)."""

    id: str
    progress: str = Field(description='"45%"')
    step: str = Field(description='"450/1000", "450/?" while the total is unknown')
    eta: str | None = Field(description='"12 minutes"; null unless training')
    status: JobStatus


class QueueFile(_StatusFile):
    """`control/queue.json`: the running (or paused) job first, then the rest in the order they will run."""

    queue: list[QueueEntry]
    current: QueueCurrent | None = Field(description="null when nothing trains")


# --- control/status.json ---------------------------------------------------------------------------
class StatusFile(_StatusFile):
    """`control/status.json`: the daemon's state; its heartbeat's age tells a live daemon from a dead one."""

    state: str = Field(description="idle, training, paused, holding or stopped")
    reason: str = Field(description="why it holds or waits (a full disk, settings that cannot train); else empty")
    pid: int = Field(description="the daemon's process id")
    worker_pid: int | None = Field(description="the training worker's process id; null when none runs")
    started: str = Field(description="when the daemon started, ISO 8601 local time")
    heartbeat: str = Field(description="the last write, ISO 8601 local time")
    heartbeat_unix: float = Field(description="the last write, seconds since the epoch; rewritten every second")
    current_job: str | None = Field(description="the id of the job in the worker; null when none")
    phase: str | None = Field(description="what the daemon or the job does now: training, tokenising, "
                                          "checkpointing before the stop, validating FILE...")
    paused: bool = Field(description="control/.pause exists")
    monitor_url: str | None = Field(description="where the web monitor listens; null when it does not")
    hold: str | None = Field(description="why the queue is held (settings that cannot train); null when not")
    config_error: str | None = Field(description="why config.json is invalid (the last good settings stay in "
                                                 "use); null when it is valid")
    preview_every_steps: int | None = Field(None, description="previews.every_steps of the job in the worker, "
                                                              "else of the workspace (0: no previews)")


# --- status/training_status.json -----------------------------------------------------------------
class TrainingJob(_StatusFile):
    """The job in the worker; the progress fields appear once the daemon has its progress."""

    id: str
    file: str
    priority: Priority
    status: JobStatus
    phase: str | None
    examples: int | None = Field(description="the file's example count; null while it is checked")
    warnings: list[str]
    step: int | None = None
    total_steps: int | None = None
    percent: int | None = None
    loss: float | None = None
    learning_rate: float | None = None
    tokens_per_second: float | None = None
    examples_per_second: float | None = Field(None, description="measured over the last step")
    eta_seconds: float | None = None
    eta: str | None = Field(None, description='eta_seconds for people: "12 minutes"')
    examples_per_step: float | None = Field(None, description="the job's examples times its epochs over its "
                                                              "steps; null with training.max_steps")


class TrainingStatusFile(_StatusFile):
    """`status/training_status.json`: the job now training (or paused)."""

    job: TrainingJob | None = Field(description="null when nothing is in the worker")
    state: str = Field(description="the daemon's state, as in control/status.json")
    time: str = Field(description="when written, ISO 8601 local time")


# --- status/queue_status.json ----------------------------------------------------------------------
class QueueStatusFile(_StatusFile):
    """`status/queue_status.json`: how many jobs are in each state."""

    time: str
    counts: dict[str, int] = Field(description="jobs by state: every JobStatus value, 0 when none")
    queued: int
    queued_high: int = Field(description="queued jobs of high priority")
    queued_examples: int = Field(description="examples in the queued jobs whose size is known")


# --- status/system_health.json ---------------------------------------------------------------------
class SystemHealthFile(_StatusFile):
    """`status/system_health.json`: the machine as the daemon last measured it (every 10 s)."""

    time: str
    ram_total_gb: float
    ram_used_percent: float
    disk_free_gb: float = Field(description="free space on the workspace's disk")
    disk_total_gb: float
    cpu_percent: float
    cpu_count: int | None
    gpu: list[dict[str, Any]] | None = Field(description="null: the daemon never loads a GPU library for this "
                                                         "(the monitor asks NVML itself)")


# Each file's place in the workspace, its model, and the schema's name in docs/schemas/.
FILES: dict[str, type[_StatusFile]] = {
    "control/queue.json": QueueFile,
    "control/status.json": StatusFile,
    "status/training_status.json": TrainingStatusFile,
    "status/queue_status.json": QueueStatusFile,
    "status/system_health.json": SystemHealthFile,
}


def schema_name(relative: str) -> str:
    return Path(relative).stem + ".schema.json"


def document(model: BaseModel) -> dict[str, Any]:
    """What a writer writes: the keys it set (and any extra), never a default it left out."""
    return model.model_dump(mode="json", exclude_unset=True)


def parse(model: type[M], value: Any) -> M | None:
    """`value` as `model`, or None when it has another shape (outside damage reads as no file)."""
    try:
        return model.model_validate(value)
    except ValueError:  # pydantic's ValidationError is one
        return None


def read(path: Path, model: type[M]) -> M | None:
    """The file as `model`; None when it is missing, unreadable, not JSON or of the wrong shape."""
    try:
        return parse(model, read_json(path))
    except (OSError, ValueError):
        return None


def json_schema(relative: str) -> dict[str, Any]:
    """The published schema of one file (its path relative to the workspace)."""
    schema = FILES[relative].model_json_schema()
    return {"$schema": SCHEMA_DRAFT, "$comment": f"the workspace's {relative}; generated from "
            f"finetuned.queue.status_files.{FILES[relative].__name__}", **schema}


def schema_text(relative: str) -> str:
    return json.dumps(json_schema(relative), indent=2, ensure_ascii=False) + "\n"


def write_schemas(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for relative in FILES:
        path = folder / schema_name(relative)
        path.write_text(schema_text(relative), encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # python -m finetuned.queue.status_files docs/schemas
    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas")):
        print(written_path)

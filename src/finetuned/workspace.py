"""The workspace layout of SPEC section 1, named once.

Every other module asks a `Workspace` for its paths; no folder name is spelled
anywhere else.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from finetuned.config import Config, load_config, protect

# A file in the inbox with one of these is still being written by someone.
IGNORED_SUFFIXES = (".tmp", ".part", ".crdownload")
# Beside every published adapter: what it was trained on, how long, from what.
ADAPTER_RECORD = "job.json"


def default_root() -> Path:
    return Path(os.environ.get("FINETUNED_ROOT") or os.getcwd())


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def at(cls, root: Path | str | None) -> Workspace:
        return cls(Path(root).expanduser().resolve() if root else default_root().resolve())

    # --- layout ---------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def inbox(self) -> Path:
        return self.root / "inbox"

    @property
    def inbox_priority(self) -> Path:
        return self.inbox / "priority"

    @property
    def inbox_normal(self) -> Path:
        return self.inbox / "normal"

    @property
    def control(self) -> Path:
        return self.root / "control"

    @property
    def pause_file(self) -> Path:
        return self.control / ".pause"

    @property
    def stop_file(self) -> Path:
        return self.control / ".stop"

    @property
    def skip_file(self) -> Path:
        return self.control / ".skip"

    @property
    def queue_json(self) -> Path:
        return self.control / "queue.json"

    @property
    def status_json(self) -> Path:
        return self.control / "status.json"

    @property
    def lock_file(self) -> Path:
        return self.control / ".daemon.lock"

    @property
    def disk_reserve(self) -> Path:
        """Space the daemon keeps aside, so that on a full disk its status can still say why it holds."""
        return self.control / ".disk-reserve"

    @property
    def quiet_lock(self) -> Path:
        """Held while the lifecycle switches the base: the daemon starts no job meanwhile."""
        return self.control / ".quiet.lock"

    @property
    def requests(self) -> Path:
        """Queue changes asked of a running daemon (`ID.json`), and its answers (`ID.reply.json`)."""
        return self.control / "requests"

    @property
    def asks(self) -> Path:
        """The monitor's questions for the model line (`ID.json`), and their answers (`ID.answer.json`)."""
        return self.control / "asks"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def current_link(self) -> Path:
        return self.data / "current.jsonl"

    @property
    def queued(self) -> Path:
        return self.data / "queued"

    @property
    def completed(self) -> Path:
        return self.data / "completed"

    @property
    def failed(self) -> Path:
        return self.data / "failed"

    @property
    def skipped(self) -> Path:
        return self.data / "skipped"

    @property
    def jobs(self) -> Path:
        """One record per job (`JOB_ID.json`): the queue's source of truth."""
        return self.data / "jobs"

    @property
    def tokenized(self) -> Path:
        """Token caches of queued jobs, removed when the job ends."""
        return self.data / "tokenized"

    @property
    def evals(self) -> Path:
        """Evaluation suites, `SUITE.jsonl` each (evaluation/suites.py)."""
        return self.root / "evals"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def base_models(self) -> Path:
        return self.models / "base"

    @property
    def adapters(self) -> Path:
        return self.models / "adapters"

    @property
    def checkpoints(self) -> Path:
        return self.models / "checkpoints"

    @property
    def versions_history(self) -> Path:
        """Every switch of the line's version (use, rollback, consolidation), one JSON line each."""
        return self.models / "versions.jsonl"

    @property
    def lifecycle_lock(self) -> Path:
        return self.models / ".lifecycle.lock"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def metrics(self) -> Path:
        return self.logs / "metrics"

    @property
    def status(self) -> Path:
        return self.root / "status"

    @property
    def training_status_json(self) -> Path:
        return self.status / "training_status.json"

    @property
    def queue_status_json(self) -> Path:
        return self.status / "queue_status.json"

    @property
    def system_health_json(self) -> Path:
        return self.status / "system_health.json"

    @property
    def consolidate_log(self) -> Path:
        """The output of scheduled consolidations, which run in their own process."""
        return self.logs / "consolidate.out"

    def log_file(self, prefix: str, day: str) -> Path:
        """`logs/PREFIX_YYYYMMDD.log`: `daemon` and `training`, a new file each day."""
        return self.logs / f"{prefix}_{day}.log"

    def daemon_log(self, when: datetime | None = None) -> Path:
        return self.log_file("daemon", (when or datetime.now()).strftime("%Y%m%d"))

    def job_record(self, job_id: str) -> Path:
        return self.jobs / f"{job_id}.json"

    def metrics_file(self, job_id: str) -> Path:
        return self.metrics / f"{job_id}.jsonl"

    def previews_file(self, job_id: str) -> Path:
        return self.logs / "previews" / f"{job_id}.jsonl"

    @property
    def ray_storage(self) -> Path:
        """Ray Train's own run state (`distributed.launcher` ray); checkpoints stay in models/checkpoints."""
        return self.logs / "ray"

    def tensorboard_dir(self, job_id: str) -> Path:
        return self.logs / "tensorboard" / job_id

    def job_checkpoints(self, job_id: str) -> Path:
        return self.checkpoints / job_id

    def adapter_dir(self, job_id: str) -> Path:
        return self.adapters / job_id

    def adapter_record(self, job_id: str) -> Path:
        return self.adapter_dir(job_id) / ADAPTER_RECORD

    # --- lifecycle ------------------------------------------------------
    def folders(self) -> list[Path]:
        return [
            self.inbox_priority, self.inbox_normal, self.control, self.queued, self.completed,
            self.failed, self.skipped, self.jobs, self.tokenized, self.base_models, self.adapters,
            self.checkpoints, self.metrics, self.status,
        ]

    def create(self) -> Config:
        """Create whatever is missing (never touching what exists) and return the config."""
        for folder in self.folders():
            folder.mkdir(parents=True, exist_ok=True)
        config = load_config(self.config_path)
        protect(self.config_path, config)
        return config

    def load_config(self) -> Config:
        return load_config(self.config_path)

"""What must hold in a workspace whatever was killed when: the invariants bench/chaos.py checks.

- every file dropped or uploaded is in exactly one place (inbox, data/queued, completed, failed,
  skipped), found by its content;
- every job record reads and validates, none was set aside as .corrupt, the state files parse;
- every completed job's adapter loads with PEFT, and its job.json and metrics log say every step trained;
- a completed job that was interrupted logged the losses an uninterrupted run of its file logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from finetuned.config import Config, save_config
from finetuned.queue.job import Job, JobStatus
from finetuned.workspace import Workspace

log = logging.getLogger("bench.chaos")
LOSS_TOLERANCE = 1e-6


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def records(ws: Workspace) -> dict[str, Job]:
    jobs = {}
    for path in entries(ws.jobs):
        if path.suffix == ".json":
            try:
                job = Job.model_validate(read_json(path))
            except ValueError:
                continue
            jobs[job.id] = job
    return jobs


def logged_losses(ws: Workspace, job_id: str) -> dict[int, float]:
    """Per-step losses; a step logged again after a crash keeps its last value."""
    path = ws.metrics_file(job_id)
    lines = path.read_text().splitlines() if path.exists() else []
    return {record["step"]: record["loss"] for record in map(json.loads, lines)}


class Invariants:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.dropped: dict[str, str] = {}  # sha256 of each file a user gave -> its name, for messages
        self.violations: list[dict[str, str]] = []
        self.adapters_checked: set[str] = set()
        self.checks = 0
        self._peft: Any = None

    def gave(self, data: bytes, what: str) -> None:
        self.dropped[hashlib.sha256(data).hexdigest()] = what

    def violation(self, after: str, what: str) -> None:
        log.error("VIOLATION after %s: %s", after, what)
        self.violations.append({"after": after, "what": what})

    def files_and_records(self, after: str) -> None:
        """The cheap checks, on a workspace nothing moves in (a dead daemon, or a stopped one)."""
        ws, found = self.ws, {}
        for folder in (ws.inbox, ws.inbox_normal, ws.inbox_priority, ws.queued, ws.completed, ws.failed, ws.skipped):
            for path in entries(folder):
                if path.is_file() and not path.is_symlink() and not path.name.startswith("."):
                    found.setdefault(hashlib.sha256(path.read_bytes()).hexdigest(), []).append(path)
        for sha, what in self.dropped.items():
            places = [str(p.relative_to(ws.root)) for p in found.get(sha, [])]
            if len(places) != 1:
                self.violation(after, f"{what} is in {len(places)} places: {places}")
        for path in entries(ws.jobs):
            if path.suffix == ".corrupt":
                self.violation(after, f"record set aside as corrupt: {path.name}")
            elif path.suffix == ".json":
                try:
                    Job.model_validate(read_json(path))
                except ValueError as exc:
                    self.violation(after, f"record {path.name} does not read: {str(exc)[:200]}")
        for path in (ws.queue_json, ws.status_json):
            if path.exists() and read_json(path) is None:
                self.violation(after, f"{path.name} does not parse")
        self.checks += 1

    def adapters(self, after: str) -> None:
        """Each newly completed job: its adapter loads with PEFT, every step is recorded."""
        for job in records(self.ws).values():
            if job.status != JobStatus.COMPLETED or job.id in self.adapters_checked:
                continue
            self.adapters_checked.add(job.id)
            folder = self.ws.adapter_dir(job.id)
            info = read_json(folder / "job.json") or {}
            steps, total = info.get("steps"), info.get("total_steps")
            if not steps or steps != total:
                self.violation(after, f"job {job.id}: job.json says {steps}/{total} steps")
            if sorted(logged_losses(self.ws, job.id)) != list(range(1, (total or 0) + 1)):
                self.violation(after, f"job {job.id}: its metrics log lacks steps")
            try:
                self._load(folder, info.get("base_path"))
            except Exception as exc:  # whatever PEFT raises, the adapter is not usable
                self.violation(after, f"job {job.id}: the adapter does not load with PEFT: {exc}")

    def _load(self, folder: Path, base_path: str | None) -> None:
        if self._peft is None:
            from peft import PeftModel
            from transformers import AutoModelForCausalLM

            self._peft = (PeftModel, AutoModelForCausalLM)
        peft_model, auto = self._peft
        peft_model.from_pretrained(auto.from_pretrained(base_path or self.ws.base_models / "tiny"), folder)

    def losses(self, reference: Workspace, config: Config) -> int:
        """Every completed job that was interrupted, trained again in this process in one go: the same loss
        at every step. Returns how many were compared."""
        from finetuned.processes.protocol import Report, Step, Train
        from finetuned.worker.cache import ModelCache
        from finetuned.worker.recipe import run_job
        from finetuned.worker.world import Solo

        reference.create()
        save_config(reference.config_path, config)
        cache, compared = ModelCache(reference), 0
        for job in sorted(records(self.ws).values(), key=lambda j: j.id):
            if job.status != JobStatus.COMPLETED or len(job.runs) < 2:
                continue
            steps: dict[int, float] = {}

            def keep(message: Report, steps: dict[int, float] = steps) -> None:
                if isinstance(message, Step):
                    steps[message.step] = message.loss

            fresh = Job(id=job.id, file=job.file, order=1.0, path=job.path, status=JobStatus.TRAINING)
            run_job(reference, Train(job=fresh, file=self.ws.root / job.path, config=config), cache,
                    Solo(keep, lambda _step: None))
            logged = logged_losses(self.ws, job.id)
            bad = [s for s in steps if abs(logged.get(s, float("inf")) - steps[s]) > LOSS_TOLERANCE]
            if bad or sorted(logged) != sorted(steps):
                self.violation("the drain", f"job {job.id} ({len(job.runs)} runs): its losses differ from an "
                                            f"uninterrupted run at steps {bad[:5]}")
            compared += 1
        return compared

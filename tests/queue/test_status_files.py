"""The status files' models: the published schemas stay true, the real writer's files validate
against them, every documented key stays, and a reader survives what it always survived."""

from __future__ import annotations

import copy
import json
import os
import time
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from helpers import chat_lines, drop, make_workspace, tiny_config

from finetuned.config import Config
from finetuned.daemon.statefiles import StateWriter
from finetuned.queue.job import Job, JobStatus
from finetuned.queue.render import Progress
from finetuned.queue.status_files import (
    FILES,
    QueueFile,
    StatusFile,
    TrainingStatusFile,
    document,
    read,
    schema_name,
    schema_text,
)
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
REGENERATE = "python -m finetuned.queue.status_files docs/schemas"

# Every key the daemon wrote before the models, which outside scripts may read by name: none may go.
STATUS_KEYS = {"state", "reason", "pid", "worker_pid", "started", "heartbeat", "heartbeat_unix", "current_job",
               "phase", "paused", "monitor_url", "hold", "config_error"}
JOB_KEYS = {"id", "file", "priority", "status", "phase", "examples", "warnings"}
PROGRESS_KEYS = {"step", "total_steps", "percent", "loss", "learning_rate", "tokens_per_second",
                 "examples_per_second", "eta_seconds", "eta"}
QUEUE_STATUS_KEYS = {"time", "counts", "queued", "queued_high", "queued_examples"}
HEALTH_KEYS = {"time", "ram_total_gb", "ram_used_percent", "disk_free_gb", "disk_total_gb", "cpu_percent",
               "cpu_count", "gpu"}


def published(relative: str) -> dict[str, Any]:
    return json.loads((SCHEMAS / schema_name(relative)).read_text(encoding="utf-8"))


def closed(schema: Any) -> Any:
    """The schema with no room for keys it does not name: what the writer writes is all declared."""
    if isinstance(schema, dict):
        out = {k: closed(v) for k, v in schema.items()}
        if out.get("additionalProperties") is True and "properties" in out:
            out["additionalProperties"] = False
        return out
    return [closed(v) for v in schema] if isinstance(schema, list) else schema


def validate(ws: Workspace, strict: bool = True) -> dict[str, Any]:
    docs = {}
    for relative in FILES:
        doc = json.loads((ws.root / relative).read_text(encoding="utf-8"))
        schema = published(relative)
        jsonschema.Draft202012Validator(closed(schema) if strict else schema).validate(doc)
        docs[relative] = doc
    return docs


class Workspaced:
    def __init__(self, root: Path, config: Config) -> None:
        self.config = config
        self.ws = make_workspace(root, config)
        self.store = JobStore(self.ws).load()
        self.writer = StateWriter(self.ws, time.time() - 5)
        self.jobs = [self._admit(name, examples) for name, examples in (("a.jsonl", 40), ("b.jsonl", None))]

    def _admit(self, name: str, examples: int | None) -> Job:
        job = self.store.admit(drop(self.ws, name, chat_lines(3)), "normal")
        job.examples = examples
        self.store.save(job)
        time.sleep(0.001)  # distinct ids
        return job

    def write(self, current: Job | None, progress: Progress | None, state: str) -> dict[str, Any]:
        self.writer.write(self.store, current, progress, state, "training" if current else None, None,
                          settings=self.config)
        return validate(self.ws)


@pytest.fixture
def state(tmp_path: Path) -> Workspaced:
    return Workspaced(tmp_path / "ws", tiny_config(epochs=2))


@pytest.mark.parametrize("relative", list(FILES))
def test_the_published_schemas_are_the_models_own(relative: str):
    path = SCHEMAS / schema_name(relative)
    assert path.exists(), f"{path} is missing: run `{REGENERATE}`"
    assert path.read_text(encoding="utf-8") == schema_text(relative), \
        f"{path} differs from the model {FILES[relative].__name__}: run `{REGENERATE}` and commit it"


def test_an_idle_daemon_s_files_validate_and_keep_their_keys(state: Workspaced):
    docs = state.write(None, None, "idle")
    status = docs["control/status.json"]
    assert set(status) == STATUS_KEYS | {"preview_every_steps"} and status["preview_every_steps"] == 50
    assert status["state"] == "idle" and status["pid"] == os.getpid() and status["worker_pid"] is None
    assert docs["status/training_status.json"]["job"] is None
    assert set(docs["status/queue_status.json"]) == QUEUE_STATUS_KEYS
    assert docs["status/queue_status.json"]["counts"] == {s.value: 2 * (s == JobStatus.QUEUED) for s in JobStatus}
    assert set(docs["status/system_health.json"]) == HEALTH_KEYS
    queue = docs["control/queue.json"]
    assert queue["current"] is None and [e["id"] for e in queue["queue"]] == [j.id for j in state.jobs]
    assert all("settings" not in e for e in queue["queue"]), "absent, not null, for a file with no settings"


def test_a_training_job_s_files_validate_with_its_progress_only_once_known(state: Workspaced):
    job = state.jobs[0]
    job.overrides = {"training": {"epochs": 2}}
    job.start_run()
    state.store.move(job, JobStatus.TRAINING, "started")
    before = state.write(job, None, "training")["status/training_status.json"]["job"]
    assert set(before) == JOB_KEYS, "no progress key before the daemon has progress"
    progress = Progress(job.id, 5, 20, eta_seconds=7.5, loss=float("nan"), learning_rate=1e-3)
    docs = state.write(job, progress, "training")
    training = docs["status/training_status.json"]["job"]
    assert set(training) == JOB_KEYS | PROGRESS_KEYS | {"examples_per_step"}
    assert (training["step"], training["total_steps"], training["percent"], training["eta"]) == (5, 20, 25,
                                                                                                 "7 seconds")
    assert training["examples_per_step"] == 40 * 2 / 20, "the job's examples times its epochs over its steps"
    assert training["examples_per_second"] is None
    queue = docs["control/queue.json"]
    assert queue["queue"][0]["settings"] == {"training.epochs": 2}
    assert queue["current"] == {"id": job.id, "progress": "25%", "step": "5/20", "eta": "7 seconds",
                                "status": "training"}
    assert docs["control/status.json"]["current_job"] == job.id


def test_max_steps_leaves_the_examples_per_step_unknown(tmp_path: Path):
    state = Workspaced(tmp_path / "ws", tiny_config(max_steps=7))
    job = state.jobs[0]
    job.start_run()
    state.store.move(job, JobStatus.TRAINING, "started")
    training = state.write(job, Progress(job.id, 1, 7), "training")["status/training_status.json"]["job"]
    assert training["examples_per_step"] is None


def test_readers_read_missing_half_written_garbage_and_wrong_shapes_as_no_file(state: Workspaced):
    state.write(None, None, "idle")
    path = state.ws.status_json
    whole = path.read_text(encoding="utf-8")
    assert read(path, StatusFile) is not None
    for text in (whole[: len(whole) // 2], "", "garbage", "[]", "null", '{"state": 5}', '{"queue": 5}'):
        path.write_text(text, encoding="utf-8")
        assert read(path, StatusFile) is None, text
    path.unlink()
    assert read(path, StatusFile) is None
    assert read(state.ws.root / "control", QueueFile) is None, "a folder where the file should be"


def test_a_newer_daemon_s_extra_keys_are_kept_not_refused(state: Workspaced):
    state.write(None, None, "idle")
    doc = json.loads(state.ws.status_json.read_text(encoding="utf-8"))
    newer = {**copy.deepcopy(doc), "something_new": {"a": 1}}
    state.ws.status_json.write_text(json.dumps(newer), encoding="utf-8")
    status = read(state.ws.status_json, StatusFile)
    assert status is not None and document(status) == newer
    jsonschema.validate(newer, published("control/status.json"))
    # and a file of an older daemon, without the fields added since, still reads
    older = {k: v for k, v in doc.items() if k in STATUS_KEYS}
    state.ws.status_json.write_text(json.dumps(older), encoding="utf-8")
    assert document(read(state.ws.status_json, StatusFile)) == older
    training = {"job": None, "state": "idle", "time": "2026-01-01T00:00:00", "extra": 1}
    assert document(TrainingStatusFile.model_validate(training)) == training

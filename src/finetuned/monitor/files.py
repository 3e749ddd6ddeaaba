"""Reading the daemon's files cheaply and safely, from many request threads at once.

Every file is written atomically by the daemon, so a read sees a whole file or the
previous one; a file that is missing, unreadable or of the wrong shape (valid JSON, but
`{"queue": 5}`: outside damage) reads as None, as if it were not there; the daemon's state
files are read through their models (`queue/status_files.py`), which say what a right shape is. Results are
cached by (mtime, size) so a page polling every second costs a `stat` per file, and
metrics JSONL files are read incrementally from where the last read stopped: a job of
180k steps is parsed once, not once per poll.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from finetuned.queue.job import Job, JobStatus
from finetuned.queue.status_files import (
    QueueFile,
    QueueStatusFile,
    StatusFile,
    SystemHealthFile,
    TrainingStatusFile,
    parse,
)
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

JOB_ID = re.compile(r"^\d{8}_\d{6}(?:_\d+)?$")


def _no_constant(_name: str) -> None:
    return None  # NaN and Infinity are not JSON; a browser could not parse them


def loads(text: str | bytes) -> Any:
    return json.loads(text, parse_constant=_no_constant)


def signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class _Jsonl:
    """One append-only JSONL file, parsed incrementally; records keyed so a later line wins."""

    def __init__(self, path: Path, key: str) -> None:
        self.path = path
        self.key = key
        self.inode = 0
        self.offset = 0
        self.records: dict[Any, dict[str, Any]] = {}
        self.sorted: list[dict[str, Any]] | None = []
        self.lock = threading.Lock()

    def read(self) -> list[dict[str, Any]]:
        with self.lock:
            try:
                st = self.path.stat()
            except OSError:
                self.inode, self.offset, self.records, self.sorted = 0, 0, {}, []
                return []
            if st.st_ino != self.inode or st.st_size < self.offset:  # replaced or truncated: start over
                self.inode, self.offset, self.records, self.sorted = st.st_ino, 0, {}, []
            if st.st_size > self.offset:
                self._read_new()
            if self.sorted is None:
                self.sorted = sorted(self.records.values(), key=lambda r: r[self.key])
            return self.sorted

    def _read_new(self) -> None:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1  # a line still being appended waits for the next read
        for line in chunk[:end].splitlines():
            try:
                record = loads(line)
            except ValueError:
                continue  # a torn line from a crash mid-write: its step is logged again on resume
            if isinstance(record, dict) and isinstance(record.get(self.key), int | float):
                self.records[record[self.key]] = record
        self.offset += end
        self.sorted = None


class Files:
    """The workspace as the monitor sees it."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self._json: dict[Path, tuple[tuple[int, int, int], Any]] = {}
        self._jsonl: dict[tuple[Path, str], _Jsonl] = {}
        self._records: dict[Path, tuple[tuple[int, int, int] | None, dict[str, Any] | None]] = {}
        self._lock = threading.Lock()

    def doc(self, path: Path) -> Any:
        sig = signature(path)
        if sig is None:
            return None
        cached = self._json.get(path)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:
            with open(path, "rb") as f:
                value = loads(f.read())
        except (OSError, ValueError):
            return None
        self._json[path] = (sig, value)
        return value

    def _dict(self, path: Path) -> dict[str, Any] | None:
        value = self.doc(path)
        return value if isinstance(value, dict) else None

    def jsonl(self, path: Path, key: str) -> list[dict[str, Any]]:
        with self._lock:
            reader = self._jsonl.get((path, key))
            if reader is None:
                reader = self._jsonl[(path, key)] = _Jsonl(path, key)
        return reader.read()

    # --- named files ----------------------------------------------------
    def status(self) -> StatusFile | None:
        return parse(StatusFile, self._dict(self.ws.status_json))

    def queue(self) -> QueueFile | None:
        doc = self._dict(self.ws.queue_json)
        if doc is not None and isinstance(doc.get("queue"), list):  # an entry that is not even an object: dropped
            doc = {**doc, "queue": [e for e in doc["queue"] if isinstance(e, dict)]}
        return parse(QueueFile, doc)

    def training(self) -> TrainingStatusFile | None:
        return parse(TrainingStatusFile, self._dict(self.ws.training_status_json))

    def training_job_id(self) -> str | None:
        training = self.training()
        job_id = training.job.id if training is not None and training.job is not None else None
        return job_id if job_id is not None and JOB_ID.match(job_id) else None

    def queue_status(self) -> QueueStatusFile | None:
        return parse(QueueStatusFile, self._dict(self.ws.queue_status_json))

    def health(self) -> SystemHealthFile | None:
        return parse(SystemHealthFile, self._dict(self.ws.system_health_json))

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        return self.jsonl(self.ws.metrics_file(job_id), "step")

    def previews(self, job_id: str) -> list[dict[str, Any]]:
        return self.jsonl(self.ws.previews_file(job_id), "step")

    def job(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None
        path = self.ws.job_record(job_id)
        sig = signature(path)
        cached = self._records.get(path)
        if cached is not None and cached[0] == sig:
            return cached[1]
        try:  # a record is the daemon's Job: anything else is damage, read as no record
            record = Job.model_validate(self.doc(path)).model_dump(mode="json")
        except ValidationError:
            record = None
        self._records[path] = (sig, record)
        return record

    def jobs(self) -> list[dict[str, Any]]:
        out = []
        try:
            names = os.listdir(self.ws.jobs)
        except OSError:
            return []
        for name in sorted(names):
            if name.endswith(".json") and JOB_ID.match(name[:-5]):
                record = self.job(name[:-5])
                if record is not None:
                    out.append(record)
        return out

    def metric_job_ids(self) -> list[str]:
        try:
            names = os.listdir(self.ws.metrics)
        except OSError:
            return []
        return sorted(n[:-6] for n in names if n.endswith(".jsonl") and JOB_ID.match(n[:-6]))

    def adapter_record(self, job_id: str) -> dict[str, Any] | None:
        if not JOB_ID.match(job_id):
            return None
        return self._dict(self.ws.adapter_record(job_id))

    def error_report(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """`data/failed/NAME.error.json` of a failed job, never a path outside data/failed."""
        if job.get("status") != JobStatus.FAILED or not isinstance(job.get("path"), str):
            return None
        path = (self.ws.root / job["path"]).resolve()
        if path.parent != self.ws.failed.resolve():
            return None
        report = self.doc(path.with_name(path.name + ".error.json"))
        return report if isinstance(report, dict) else None

    def signatures(self, paths: list[Path]) -> tuple[Any, ...]:
        return tuple(signature(p) for p in paths)

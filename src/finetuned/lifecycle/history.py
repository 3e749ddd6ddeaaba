"""The model line's record: every switch of version in `models/versions.jsonl`, and what it leaves out.

Any process appends here (the daemon, `use`, `consolidate`), each line in one O_APPEND write, and
reads it back without a lock: a line cut by a crash is skipped, the rest still counts. The daemon
and the targets read the record to know which jobs the line no longer continues from.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finetuned.lifecycle.records import parse_time
from finetuned.logs import OneLine
from finetuned.queue.job import Job
from finetuned.timestamps import now_text
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

SWITCHES = ("use", "rollback")  # a consolidation that switches also writes a "use" entry


def read_history(ws: Workspace) -> list[dict[str, Any]]:
    path = ws.versions_history
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entries.append(json.loads(line))
        except ValueError:  # a line cut by a crash: the rest still counts
            continue
    return entries


def _append_line(path: Path, line: str) -> None:
    """One write with O_APPEND: concurrent writers (the daemon's logger) never split a line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)


def append_history(ws: Workspace, entry: dict[str, Any]) -> None:
    record = {"time": now_text(), "unix": time.time(), **entry}
    _append_line(ws.versions_history, json.dumps(record, ensure_ascii=False) + "\n")


def log_event(ws: Workspace, message: str, level: int = logging.INFO) -> None:
    """A line in today's daemon log, in the daemon's own format, from any process."""
    record = logging.LogRecord("finetuned.lifecycle", level, __file__, 0, message, None, None)
    line = OneLine().format(record)
    _append_line(ws.daemon_log(), line + "\n")
    log.debug(message)  # the line above is the record; a daemon's own handler must not write it twice


def line_started(ws: Workspace) -> float | None:
    """When the current version became current (unix time), or None if it never changed."""
    for entry in reversed(read_history(ws)):
        if entry.get("action") in SWITCHES:
            return float(entry["unix"])
    return None


def _last_trained(job: Job) -> float | None:
    ends = [parse_time(run.ended) for run in job.runs if run.ended]
    return max((t for t in ends if t is not None), default=None)


def line_exclusions(ws: Workspace, jobs: Iterable[Job]) -> list[str]:
    """Jobs the model line must not continue from: finished before the latest switch of version.

    The daemon adds these to `line_exclude`, so a job after `use`/`rollback` starts from the
    chosen version itself, not from an old line's last checkpoint on that same base.
    """
    started = line_started(ws)
    if started is None:
        return []
    out = []
    for job in jobs:
        if job.status.active:
            continue
        ended = _last_trained(job)
        if ended is not None and ended <= started:
            out.append(job.id)
    return sorted(out)

"""Retention: what `finetuned gc` may remove, under one explicit rule, and nothing else.

Removable:
- checkpoints of a job beyond its newest `lifecycle.keep_checkpoints`, and all but the final
  checkpoint of a completed job;
- token caches (`data/tokenized/JOB_ID`) of jobs no longer queued;
- debris of interrupted writes (`checkpoint-N.tmp`, incomplete `checkpoint-N`, hidden `.*.tmp`,
  `.*.tmp-PID`, `.*.old-PID`) under models/, data/ and the state folders (never the inbox).

Never: adapters, versions, base models, a checkpoint holding a `KEEP` (or `BEST`) file, the newest checkpoint
of a job that is not completed (a resume or a recovery needs it), or anything of the job a live
daemon is training. While a daemon runs, debris changed in the last hour is left alone: it may be
a write in progress.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from finetuned import checkpoints
from finetuned.config import Config
from finetuned.disk import tree_bytes
from finetuned.fsio import remove_tree
from finetuned.lifecycle.errors import LifecycleError
from finetuned.lifecycle.history import log_event
from finetuned.lifecycle.line import daemon_current_job, daemon_pid, lifecycle_lock
from finetuned.lifecycle.records import read_jobs
from finetuned.queue.job import JobStatus
from finetuned.workspace import Workspace

QUIET_SECONDS = 3600.0
_HIDDEN_DEBRIS = re.compile(r"^\..+\.(tmp|tmp-\d+|old-\d+)$")


@dataclass(frozen=True)
class Item:
    path: Path
    kind: str  # checkpoint | token cache | debris
    reason: str
    bytes: int = 0


@dataclass
class Plan:
    remove: list[Item] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)  # what the rule protects, and why: shown by --dry-run

    @property
    def bytes(self) -> int:
        return sum(item.bytes for item in self.remove)


def _newest_change(path: Path) -> float:
    newest = path.lstat().st_mtime
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except FileNotFoundError:
                continue
    return newest


def _is_debris(path: Path, in_checkpoints: bool) -> bool:
    if _HIDDEN_DEBRIS.match(path.name):
        return True
    if in_checkpoints and checkpoints.TMP_NAME.match(path.name):
        return True
    # A checkpoint folder without its state.json or its tensors was cut short: checkpoints.complete passes over it.
    return in_checkpoints and bool(checkpoints.NAME.match(path.name)) and not checkpoints.is_whole(path)


def _debris_folders(ws: Workspace) -> list[tuple[Path, bool]]:
    folders = [(ws.models, False), (ws.base_models, False), (ws.adapters, False), (ws.checkpoints, False),
               (ws.tokenized, False), (ws.jobs, False), (ws.control, False), (ws.status, False), (ws.data, False)]
    if ws.checkpoints.is_dir():
        folders += [(job_dir, True) for job_dir in sorted(ws.checkpoints.iterdir())
                    if job_dir.is_dir() and not job_dir.name.startswith(".")]
    return folders


def plan(ws: Workspace, config: Config | None = None, now: float | None = None) -> Plan:
    """What retention would remove now; reads only."""
    config = config or ws.load_config()
    keep_n = config.lifecycle.keep_checkpoints
    now = time.time() if now is None else now
    daemon_alive = daemon_pid(ws) is not None
    training = daemon_current_job(ws)
    jobs = read_jobs(ws)
    out = Plan()

    def protect(path: Path, kind: str, reason: str) -> None:
        out.kept.append(Item(path, kind, reason))

    for job_dir, in_checkpoints in _debris_folders(ws):
        if not job_dir.is_dir():
            continue
        for path in sorted(job_dir.iterdir()):
            if not _is_debris(path, in_checkpoints):
                continue
            if (path / checkpoints.KEEP).exists():
                protect(path, "debris", "holds a KEEP file")
            elif in_checkpoints and job_dir.name == training:
                protect(path, "debris", "the running daemon is training this job")
            elif daemon_alive and now - _newest_change(path) < QUIET_SECONDS:
                protect(path, "debris", "changed in the last hour while a daemon runs: may be a write in progress")
            else:
                out.remove.append(Item(path, "debris", "left by an interrupted write", tree_bytes(path)))

    if ws.checkpoints.is_dir():
        for job_dir in sorted(ws.checkpoints.iterdir()):
            if not job_dir.is_dir() or job_dir.name.startswith("."):
                continue
            found = checkpoints.complete(job_dir)
            job = jobs.get(job_dir.name)
            if job_dir.name == training or (daemon_alive and job is not None and job.status == JobStatus.TRAINING):
                for _progress, path in found:
                    protect(path, "checkpoint", "the running daemon is training this job")
                continue
            completed = job is not None and job.status == JobStatus.COMPLETED
            keep = 1 if completed else keep_n
            status = job.status.value if job else "no job record"
            best = found[-1][0].best_step if found else None
            for n, (progress, path) in enumerate(reversed(found)):  # newest first
                if (path / checkpoints.KEEP).exists():
                    protect(path, "checkpoint", "marked KEEP")
                elif (path / checkpoints.BEST).exists() or progress.step == best:
                    protect(path, "checkpoint", "the job's best by its early-stopping metric")
                elif n == 0:
                    protect(path, "checkpoint", "final checkpoint of a completed job" if completed
                            else f"newest checkpoint of a {status} job: a resume or recovery needs it")
                elif n < keep:
                    protect(path, "checkpoint", f"within lifecycle.keep_checkpoints={keep_n}")
                else:
                    why = ("completed job: only the final checkpoint is kept" if completed
                           else f"beyond lifecycle.keep_checkpoints={keep_n} ({status} job)")
                    out.remove.append(Item(path, "checkpoint", f"step {progress.step}: {why}", tree_bytes(path)))

    if ws.tokenized.is_dir():
        for path in sorted(ws.tokenized.iterdir()):
            if path.name.startswith(".") or not path.is_dir():
                continue
            job = jobs.get(path.name)
            if job is not None and job.status.active:
                protect(path, "token cache", f"job {job.id} is {job.status.value}")
            else:
                why = f"job {job.status.value}" if job else "no such job"
                out.remove.append(Item(path, "token cache", why, tree_bytes(path)))
    return out


def _remove(path: Path) -> None:
    """Rename aside, then delete: a crash half-way leaves debris, never a checkpoint that looks whole."""
    aside = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    if aside.is_dir():
        remove_tree(aside)
    else:
        aside.unlink(missing_ok=True)


def apply(ws: Workspace, planned: Plan) -> list[Item]:
    """Remove what `planned` lists and a fresh plan still lists (the daemon may have moved on since)."""
    with lifecycle_lock(ws, "collect garbage"):
        still = {item.path for item in plan(ws).remove}
        done = []
        for item in planned.remove:
            if item.path in still:
                _remove(item.path)
                done.append(item)
        if done:
            freed = sum(item.bytes for item in done) / 2**30
            log_event(ws, f"gc: removed {len(done)} item(s), {freed:.2f} GB: "
                          + ", ".join(str(item.path.relative_to(ws.root)) for item in done[:20])
                          + (" ..." if len(done) > 20 else ""))
        return done


def keep(ws: Workspace, job_id: str, step: int, note: str = "", undo: bool = False) -> Path:
    """Mark a checkpoint KEEP (retention never removes it), or unmark it."""
    path = checkpoints.path_for(ws.job_checkpoints(job_id), step)
    if checkpoints.read_progress(path) is None:
        have = [str(p.step) for p, _ in checkpoints.complete(ws.job_checkpoints(job_id))]
        raise LifecycleError(f"job {job_id} has no complete checkpoint at step {step}"
                             + (f" (it has: {', '.join(have)})" if have else ""))
    marker = path / checkpoints.KEEP
    if undo:
        marker.unlink(missing_ok=True)
        log_event(ws, f"keep: checkpoint {job_id}/checkpoint-{step} no longer marked KEEP")
        return marker
    marker.write_text((note or "kept by finetuned keep") + "\n", encoding="utf-8")
    log_event(ws, f"keep: checkpoint {job_id}/checkpoint-{step} marked KEEP" + (f" ({note})" if note else ""))
    return marker

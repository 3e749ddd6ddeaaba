"""Which version the model line trains on, and every switch between versions, on record.

`config.json`'s `base_model` is the current version. `use` and `rollback`
change it (atomically), append the switch to `models/versions.jsonl` and log
it in `logs/daemon_YYYYMMDD.log`, so a config never drifts silently.

A switch starts a fresh line on the chosen version: jobs that finished before
it are left out of the line (`history.line_exclusions`, for the daemon). A switch is
refused while a job is part-way through training on the current base, because
its steps are in no version yet and it would resume on a different base.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from finetuned import checkpoints
from finetuned.config import Config, ConfigError, save_config
from finetuned.fsio import read_json
from finetuned.lifecycle.errors import LifecycleError, UnfinishedWork
from finetuned.lifecycle.history import append_history, log_event
from finetuned.lifecycle.records import read_jobs
from finetuned.lifecycle.versions import Version, ensure_recorded, find, lineage
from finetuned.lock import AlreadyRunning, WorkspaceLock, holder
from finetuned.queue.job import JobStatus
from finetuned.workspace import Workspace

log = logging.getLogger(__name__)

DAEMON_ANSWER_SECONDS = 15.0
LOCK_WAIT_SECONDS = 2.0  # a notify command forked while the lock was held shares it until it execs


def unfinished(ws: Workspace, base_model: str) -> list[str]:
    """Jobs part-way through training on `base_model`, each as a line saying so.

    A job in training (while a daemon runs) or with a checkpoint on this base that it will resume from
    counts; one that never reached a checkpoint restarts from nothing and does not.
    """
    found = []
    alive = daemon_pid(ws) is not None
    for job in read_jobs(ws).values():
        if not job.status.active:
            continue
        last = checkpoints.latest(ws.job_checkpoints(job.id))
        on_base = last is not None and last[0].base_model == base_model
        if job.status in (JobStatus.TRAINING, JobStatus.PAUSED) and (alive or on_base):
            found.append(f"job {job.id} ({job.file}) is {job.status.value} at step {job.step}")
        elif on_base:
            assert last is not None
            found.append(f"job {job.id} ({job.file}) has trained {last[0].step} of its steps and waits to resume")
    return found


def daemon_pid(ws: Workspace) -> int | None:
    return holder(ws.lock_file)


def daemon_current_job(ws: Workspace) -> str | None:
    """The job a live daemon is training (or holding paused) now, from control/status.json."""
    if daemon_pid(ws) is None:
        return None
    try:
        return read_json(ws.status_json).get("current_job")
    except (OSError, ValueError, AttributeError):
        return None


@contextlib.contextmanager
def lifecycle_lock(ws: Workspace, what: str) -> Iterator[None]:
    """One consolidation, switch or gc at a time per workspace."""
    lock = WorkspaceLock(ws.lifecycle_lock)
    try:
        lock.acquire(wait=LOCK_WAIT_SECONDS)
    except AlreadyRunning:
        raise LifecycleError(f"cannot {what} now: another consolidate, use, rollback or gc runs on this "
                             "workspace; try again when it ends") from None
    try:
        yield
    finally:
        lock.release()


@contextlib.contextmanager
def quiet_daemon(ws: Workspace) -> Iterator[None]:
    """Keep a live daemon from starting a job while the base changes: the quiet lock, until a tick has seen it.

    Its own lock, never the user's `.pause`: a pause the user makes meanwhile is theirs and stays.
    """
    lock = WorkspaceLock(ws.quiet_lock).acquire()  # the lifecycle lock is held: no one else takes it
    try:
        if daemon_pid(ws) is not None:
            taken = time.time()
            # A heartbeat written after the lock was taken ends a tick that either saw it or had already
            # recorded the job it started, which the caller's second look at the records then finds.
            while _heartbeat(ws) <= taken + 0.05:
                if daemon_pid(ws) is None:
                    break  # it stopped: nothing will start a job now
                if time.time() > taken + DAEMON_ANSWER_SECONDS:
                    raise LifecycleError(
                        f"the daemon did not answer within {DAEMON_ANSWER_SECONDS:.0f}s; nothing changed")
                time.sleep(0.1)
        yield
    finally:
        lock.release()


def _heartbeat(ws: Workspace) -> float:
    try:
        return float(read_json(ws.status_json).get("heartbeat_unix", 0))
    except (OSError, ValueError, AttributeError, TypeError):
        return 0.0


def refuse_if_unfinished(ws: Workspace, base_model: str, action: str, hint: str = "") -> None:
    busy = unfinished(ws, base_model)
    if busy:
        more = f" (and {len(busy) - 1} more)" if len(busy) > 1 else ""
        raise UnfinishedWork(f"cannot {action} now: {busy[0]}{more}; its steps are in no version yet. "
                             + (hint or "Let it finish (or cancel it), or pass --force to switch anyway"))


def switch(ws: Workspace, target: Version, action: str, force: bool = False, note: str = "",
           extra: dict[str, Any] | None = None) -> Version:
    """Make `target` current: config.json's base_model, the history and the daemon log. The lock is held."""
    try:
        config = ws.load_config()
    except ConfigError as exc:
        raise LifecycleError(exc.line()) from None
    previous = config.base_model
    if not force:
        refuse_if_unfinished(ws, previous, action)
    with quiet_daemon(ws):
        if not force:  # again, now that no job can start: one may have begun since the first look
            refuse_if_unfinished(ws, previous, action)
        ensure_recorded(ws, previous)  # the version we leave gets its version.json too
        config = ws.load_config()
        config.base_model = target.base_model
        save_config(ws.config_path, config)
        append_history(ws, {"action": action, "version": target.id, "base_model": target.base_model,
                            "previous": previous, "note": note, "forced": force, **(extra or {})})
        log_event(ws, f"{action}: base model is now {target.id} (base_model={target.base_model!r}, "
                      f"was {previous!r})" + (f"; {note}" if note else ""))
    return target


def current(ws: Workspace, config: Config | None = None) -> Version:
    from finetuned.lifecycle.versions import describe

    config = config or ws.load_config()
    return describe(ws, config.base_model)


def use(ws: Workspace, ref: str, force: bool = False) -> Version:
    """Train on version `ref` from the next job on, if it does no worse on the suites in evals/ (or `force`)."""
    with lifecycle_lock(ws, "switch versions"):
        config = ws.load_config()
        base = config.base_model
        target = find(ws, ref, base)
        if target.base_model == base:
            return target
        if not target.recorded:
            target = ensure_recorded(ws, target.base_model)
        if not force:
            from finetuned.lifecycle import gate  # torch and the evaluator come with it

            gate.check(ws, config, target, ensure_recorded(ws, base), "use")
        return switch(ws, target, "use", force)


def rollback(ws: Workspace, ref: str, force: bool = False) -> Version:
    """Make an older version current again; nothing is deleted, so `use` can go forward again."""
    with lifecycle_lock(ws, "roll back"):
        base = ws.load_config().base_model
        now = current(ws)
        target = find(ws, ref, base)
        if target.base_model == base:
            raise LifecycleError(f"{target.id} is already the current version")
        older = {v.id for v in lineage(ws, now, base)[1:]}
        if target.id not in older and not (target.name == now.name and target.version < now.version):
            raise LifecycleError(f"{target.id} is not older than the current version {now.id}; "
                                 f"use: finetuned use {target.id}")
        if not target.recorded:
            target = ensure_recorded(ws, target.base_model)
        return switch(ws, target, "rollback", force, extra={"from": now.id})

"""finetuned status: what trains now, or one job's record."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.table import Table

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.fsio import read_json
from finetuned.lock import holder
from finetuned.queue.store import JobNotFound, JobStore
from finetuned.workspace import Workspace

HELP = """Show the daemon's state and the job in training (or one job's record).

examples:
  finetuned status
  finetuned status 20251116_014530
  finetuned status 20251116_014530 --json
"""


def _read(path: Any) -> dict[str, Any] | None:
    try:
        return read_json(path)
    except (OSError, ValueError):
        return None


def daemon_line(ws: Workspace) -> str:
    pid = holder(ws.lock_file)
    status = _read(ws.status_json) or {}
    age = time.time() - status.get("heartbeat_unix", 0) if status else None
    if pid is None:
        return "daemon: not running" + (f" (last seen {status.get('heartbeat')})" if status else "")
    stale = f" [yellow]no heartbeat for {age:.0f}s[/yellow]" if age is not None and age > 10 else ""
    return f"daemon: running (pid {pid}), {status.get('state', '?')}{stale}"


def show_job(ws: Workspace, job_id: str, as_json: bool) -> None:
    try:
        job = JobStore(ws).load().get(job_id)
    except JobNotFound as exc:
        fail(str(exc))
    if as_json:
        console.print_json(job.model_dump_json())
        return
    console.print(f"[bold]{job.id}[/bold]  {job.file}  ({job.priority} priority)")
    console.print(f"status: {job.status.value}" + (f" — {job.reason}" if job.reason else ""))
    console.print(f"file: {job.path}    examples: {job.examples if job.examples is not None else '?'}"
                  f"    steps: {job.step}/{job.total_steps or '?'}")
    for warning in job.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if job.summary:
        s = job.summary
        console.print(f"trained: {s.get('steps')} steps, {s.get('examples_trained')} examples, "
                      f"{s.get('tokens')} tokens; loss {s.get('first_loss')} -> {s.get('final_loss')}")
    table = Table("time", "status", "reason", title="history", title_justify="left")
    for event in job.history:
        table.add_row(event.time, event.status, event.reason)
    console.print(table)


def status(
    job_id: Annotated[str | None, typer.Argument(help="A job id, for its full record.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    if job_id:
        show_job(ws, job_id, as_json)
        return
    training = _read(ws.training_status_json) or {}
    if as_json:
        print(json.dumps({"daemon": _read(ws.status_json), "training": training}, indent=2))
        return
    console.print(daemon_line(ws))
    job = training.get("job")
    if not job:
        console.print("nothing is training")
        return
    console.print(f"[bold]{job['id']}[/bold]  {job['file']}  ({job['priority']})  {job['status']}"
                  + (f", {job['phase']}" if job.get("phase") and job.get("phase") != "training" else ""))
    for warning in job.get("warnings") or []:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    if job.get("total_steps"):
        loss = f"{job['loss']:.4f}" if job.get("loss") is not None else "?"
        console.print(f"step {job['step']}/{job['total_steps']} ({job['percent']}%)  loss {loss}"
                      f"  ETA {job.get('eta') or '?'}")

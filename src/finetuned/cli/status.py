"""finetuned status: what trains now, or one job's record."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from finetuned.cli.common import RootOption, console, workspace
from finetuned.lock import holder
from finetuned.overrides import listed
from finetuned.queue.job import JobStatus
from finetuned.queue.status_files import QueueStatusFile, StatusFile, TrainingStatusFile, document, read
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

HELP = """Show the daemon's state and the job in training (or one job's record).

examples:
  finetuned status
  finetuned status 20251116_014530
  finetuned status 20251116_014530 --json
"""


def loss_text(value: Any) -> str:
    """A loss to 4 significant digits (12.23, 0.008412): what a person compares, not 15 digits of noise."""
    return f"{value:.4g}" if isinstance(value, int | float) else "?"


def daemon_line(ws: Workspace, status: StatusFile | None) -> str:
    pid = holder(ws.lock_file)
    if pid is None:
        return "daemon: not running" + (f" (last seen {status.heartbeat})" if status else "")
    age = time.time() - status.heartbeat_unix if status else None
    stale = f" [yellow]no heartbeat for {age:.0f}s[/yellow]" if age is not None and age > 10 else ""
    if status is None:
        state = ", ?"
    elif status.state == "holding":
        state = f", [red]holding the queue[/red]: {escape(status.reason or '?')}"
    elif status.current_job:
        state = ""  # the job's line says what it does
    elif status.phase:
        state = f", {status.state}: {escape(status.phase)}"  # validating, tokenising, checking: never a bare "idle"
    else:
        state = f", {status.state}"
    return f"daemon: running (pid {pid}){state}{stale}"


def queue_line(ws: Workspace) -> str | None:
    doc = read(ws.queue_status_json, QueueStatusFile)
    if doc is None:
        return None
    queued, failed, high = doc.counts.get("queued", 0), doc.counts.get("failed", 0), doc.queued_high
    parts = [f"{queued} queued" + (f" ({high} priority)" if high else "")]
    if failed:
        parts.append(f"{failed} failed (finetuned retry JOB_ID puts one back)")
    return "queue: " + ", ".join(parts)


def show_job(ws: Workspace, job_id: str, as_json: bool) -> None:
    job = JobStore(ws).load().get(job_id)
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
                      f"{s.get('tokens')} tokens; loss {loss_text(s.get('first_loss'))} -> "
                      f"{loss_text(s.get('final_loss'))}")
    if job.overrides:
        console.print(f"its own settings: {listed(job.overrides)}", highlight=False)
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
    training = read(ws.training_status_json, TrainingStatusFile)
    daemon = read(ws.status_json, StatusFile)
    if as_json:
        print(json.dumps({"daemon": document(daemon) if daemon else None,
                          "training": document(training) if training else {}}, indent=2))
        return
    console.print(daemon_line(ws, daemon), highlight=False)
    if daemon and daemon.hold and daemon.state != "holding":  # a job paused in the worker, the queue held
        console.print(f"[red]holding the queue[/red]: {escape(daemon.hold)}", highlight=False)
    if daemon and daemon.config_error:
        console.print(f"[yellow]config.json is invalid[/yellow]: {escape(daemon.config_error)}; the daemon "
                      "keeps its last good settings", highlight=False)
    queue = queue_line(ws)
    if queue:
        console.print(queue, highlight=False)
    job = training.job if training else None
    if job is None:
        console.print("nothing is training")
        return
    paused = job.status == JobStatus.PAUSED
    doing = f", {job.phase}" if job.phase and job.phase not in ("training", job.status.value) else ""
    console.print(f"[bold]{job.id}[/bold]  {escape(job.file)}  ({job.priority})  {job.status.value}{doing}",
                  highlight=False)
    for warning in job.warnings:
        console.print(f"[yellow]warning:[/yellow] {escape(warning)}", highlight=False)
    if job.total_steps:
        eta = "" if paused else f"  ETA {job.eta or '?'}"  # nothing moves while paused
        console.print(f"step {job.step}/{job.total_steps} ({job.percent}%)  loss "
                      f"{loss_text(job.loss)}{eta}", highlight=False)

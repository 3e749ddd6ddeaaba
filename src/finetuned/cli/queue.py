"""finetuned queue: the queue as a table, or as queue.json."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from finetuned.cli.common import RootOption, console, workspace
from finetuned.overrides import listed
from finetuned.queue.job import JobStatus
from finetuned.queue.render import queue_document
from finetuned.queue.status_files import QueueFile, document, read
from finetuned.queue.store import JobStore

HELP = """Show the queue: the job in training first, then the rest in the order they will run.

examples:
  finetuned queue
  finetuned queue --json | jq '.queue[].file'
"""


def queue(
    as_json: Annotated[bool, typer.Option("--json", help="Print control/queue.json.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    doc = read(ws.queue_json, QueueFile)
    if doc is None:
        # No daemon has written it yet (or it is damaged): the records say the same, without progress.
        doc = queue_document(JobStore(ws).load().active(), None, None)
    if as_json:
        print(json.dumps(document(doc), indent=2, ensure_ascii=False))
        return
    current = doc.current
    if current:
        console.print(f"current: [bold]{current.id}[/bold]  step {current.step} ({current.progress})"
                      + (f"  ETA {current.eta}" if current.eta else ""))
    if not doc.queue:
        console.print("the queue is empty")
        return
    with_settings = any(entry.settings for entry in doc.queue)
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("#")
    # Whole ids, however narrow the terminal (the ids cancel, retry and export take); the rest may wrap.
    table.add_column("id", no_wrap=True, min_width=max(len(entry.id) for entry in doc.queue))
    for name in ("file", "priority", "size", "added", "status", *(["settings"] if with_settings else [])):
        table.add_column(name, overflow="fold")
    for n, entry in enumerate(doc.queue, 1):
        style = "bold" if entry.status in (JobStatus.TRAINING, JobStatus.PAUSED) else ""
        own = [listed(entry.settings or {})] if with_settings else []
        table.add_row(str(n), entry.id, escape(entry.file), entry.priority, entry.size, entry.added,
                      entry.status.value, *own, style=style)
    console.print(table, highlight=False)

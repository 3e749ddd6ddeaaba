"""finetuned gc / keep: retention of checkpoints, token caches and debris; KEEP markers."""

from __future__ import annotations

import logging
from typing import Annotated

import typer
from rich.table import Table

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.config import ConfigError

GC_HELP = """Remove what retention allows, after showing it: checkpoints beyond lifecycle.keep_checkpoints
per job (a completed job keeps only its final one), token caches of jobs no longer queued,
and debris of interrupted writes.

Never removed: adapters, versions, base models, checkpoints marked KEEP (finetuned keep),
the newest checkpoint of a job that is not completed, anything of the job in training.

examples:
  finetuned gc --dry-run       # what would go, and how much space it frees
  finetuned gc                 # asks before removing
  finetuned gc --yes
"""

KEEP_HELP = """Mark a checkpoint KEEP: retention (finetuned gc) never removes it.

It writes models/checkpoints/JOB_ID/checkpoint-STEP/KEEP; --undo removes the mark.

examples:
  finetuned keep 20251116_014530 400 --note "before the lr change"
  finetuned keep 20251116_014530 400 --undo
"""


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.1f} MB"


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only show what would be removed.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.lifecycle import retention  # torch comes with it: keep `finetuned --help` instant

    # An incomplete checkpoint is listed below as debris; the loader's "passing over" warning says it twice.
    logging.getLogger("finetuned.worker.tensors").setLevel(logging.ERROR)
    try:
        plan = retention.plan(ws)
    except ConfigError as exc:
        fail(exc.line(), 2)  # not ConfigError's 1: this command always answered an unusable config.json with 2
    if plan.remove:
        table = Table("kind", "path", "size", "why")
        for item in plan.remove:
            table.add_row(item.kind, str(item.path.relative_to(ws.root)), _size(item.bytes), item.reason)
        console.print(table)
    if dry_run:
        for item in plan.kept:
            console.print(f"kept: {item.path.relative_to(ws.root)} ({item.reason})", highlight=False)
        console.print(f"dry run: {len(plan.remove)} item(s) would be removed, freeing {_size(plan.bytes)}; "
                      "nothing was removed")
        return
    if not plan.remove:
        console.print("nothing to remove")
        return
    if not yes and not typer.confirm(f"remove these {len(plan.remove)} item(s), {_size(plan.bytes)}?"):
        console.print("nothing removed")
        return
    done = retention.apply(ws, plan)
    console.print(f"removed {len(done)} item(s), freed {_size(sum(i.bytes for i in done))}")


def keep(
    job_id: Annotated[str, typer.Argument(help="The job.")],
    step: Annotated[int, typer.Argument(help="The checkpoint's step.")],
    note: Annotated[str, typer.Option("--note", help="Why it is kept (written into KEEP).")] = "",
    undo: Annotated[bool, typer.Option("--undo", help="Remove the KEEP mark.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.lifecycle import retention

    marker = retention.keep(ws, job_id, step, note=note, undo=undo)
    console.print(f"{'unmarked' if undo else 'kept'}: {marker.parent.relative_to(ws.root)}")

"""finetuned add: put a file into the inbox."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.fsio import unique_path

HELP = """Copy a JSONL file into the inbox (inbox/priority/ with --priority).

The copy is written under a temporary name and renamed when whole, so the
daemon never reads it half-written.

examples:
  finetuned add puzzles_001.jsonl
  finetuned add fixes.jsonl --priority     # preempts normal work
"""


def add(
    file: Annotated[Path, typer.Argument(help="The JSONL (or .json array) file.", exists=False)],
    priority: Annotated[bool, typer.Option("--priority", help="Train it before normal work.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    if not file.is_file():
        fail(f"{file}: no such file")
    folder = ws.inbox_priority if priority else ws.inbox_normal
    folder.mkdir(parents=True, exist_ok=True)
    target = unique_path(folder, file.name, "copy")
    tmp = folder / f".{target.name}.part"
    shutil.copyfile(file, tmp)
    tmp.rename(target)
    console.print(f"added {target.relative_to(ws.root)}")

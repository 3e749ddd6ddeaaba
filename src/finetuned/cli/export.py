"""finetuned export: a self-contained model folder to load elsewhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.cli.consolidate import quiet_libraries
from finetuned.config import ConfigError
from finetuned.lifecycle.errors import LifecycleError

HELP = """Export a version, or a job's adapter, to a new folder that loads anywhere.

A version (tiny-v2, v2) is copied as it is. A job gives its adapter in
adapter/ and a copy of its base in base/; with --merged, one model with the
adapter merged in. Each export has a model card, README.md (what it is, from what
data, how many steps, how to load it), every file readable by all,
and finetuned.json (the full record).

examples:
  finetuned export v2 --to /nas/models/tiny-v2
  finetuned export 20251116_014530 --to ~/share/puzzles-adapter
  finetuned export 20251116_014530 --merged --to ~/share/puzzles-merged
"""


def export(
    ref: Annotated[str, typer.Argument(help="A job id or a version.")],
    to: Annotated[Path, typer.Option("--to", help="The folder to create (must not exist, or be empty).")],
    merged: Annotated[bool, typer.Option("--merged", help="A job: merge the adapter into its base.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    from finetuned.lifecycle.export import export as run_export

    quiet_libraries()
    try:
        folder = run_export(ws, ref, to, merged=merged)
    except (LifecycleError, ConfigError) as exc:
        fail(str(exc))
    console.print(f"exported {ref} to {folder} (see {folder / 'README.md'})")

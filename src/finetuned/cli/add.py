"""finetuned add: check a file, then put it into the inbox (with its own settings, if given)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.fsio import NAME_MAX, atomic_write_json, fit_name, unique_path
from finetuned.overrides import SIDECAR_SUFFIX, assignments, job_config, listed, sidecar_for

HELP = """Check a JSONL file, then copy it into the inbox (inbox/priority/ with --priority).

The file is validated first, as the daemon would (format, UTF-8, JSON, records): a
file that cannot train is refused here, with its reason, and nothing is copied
(--no-check skips this). --set gives the file its own settings, over config.json for
its job alone; they are written beside it as NAME.jsonl.config.json. The copy is
written under a temporary name and renamed when whole, so the daemon never reads it
half-written.

examples:
  finetuned add puzzles_001.jsonl
  finetuned add fixes.jsonl --priority     # preempts normal work
  finetuned add hard.jsonl --set training.epochs=2 --set training.learning_rate=1e-4
"""


def add(
    file: Annotated[Path, typer.Argument(help="The JSONL (or .json array) file.", exists=False)],
    priority: Annotated[bool, typer.Option("--priority", help="Train it before normal work.")] = False,
    settings: Annotated[list[str] | None, typer.Option(
        "--set", metavar="KEY=VALUE", help="A setting for this file's job alone (repeatable), e.g. training.epochs=2.",
    )] = None,
    no_check: Annotated[bool, typer.Option("--no-check", help="Copy it without validating it first.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    if not file.is_file():
        fail(f"{file}: no such file")
    config = ws.load_config()
    overrides = assignments(settings or [])
    effective = job_config(config, overrides, "--set", ws=ws)  # checked as the daemon will train it
    if not no_check:
        from finetuned.data import validate_file

        result = validate_file(file, effective.data)
        if not result.ok:
            assert result.error is not None
            fail(f"{file}: {result.error['error']} (not added; --no-check adds it anyway)")
    folder = ws.inbox_priority if priority else ws.inbox_normal
    folder.mkdir(parents=True, exist_ok=True)
    # Every name here fits the file system's 255 bytes, the settings' name beside the file's included.
    target = unique_path(folder, file.name, "copy", NAME_MAX - len(SIDECAR_SUFFIX) if overrides else NAME_MAX)
    if overrides:  # before the file: the inbox never takes a file whose sidecar is still to come
        atomic_write_json(sidecar_for(target), overrides)
    tmp = folder / fit_name(f".{target.name}.part")
    shutil.copyfile(file, tmp)
    tmp.rename(target)
    console.print(f"added {target.relative_to(ws.root)}" + (f" with {listed(overrides)}" if overrides else ""),
                  highlight=False)

"""finetuned init: create a workspace."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import console, fail
from finetuned.config import ConfigError
from finetuned.workspace import Workspace

SAMPLE = "chat_sample.jsonl"

HELP = """Create a workspace: config.json with defaults, inbox/, control/, data/, models/, logs/.

Existing files are left as they are, so running it twice is safe.

examples:
  finetuned init ~/training
  finetuned init demo --sample    # with a small chat dataset waiting in inbox/normal/
"""


def sample_path() -> Path:
    return Path(str(resources.files("finetuned.samples").joinpath(SAMPLE)))


def init(
    directory: Annotated[Path, typer.Argument(help="Where to create it.")] = Path("."),
    sample: Annotated[
        bool, typer.Option("--sample", help="Drop the bundled sample dataset into inbox/normal/.")
    ] = False,
) -> None:
    ws = Workspace.at(directory)
    try:
        ws.create()
    except ConfigError as exc:
        fail(str(exc), 2)
    console.print(f"workspace ready: {ws.root}")
    if sample:
        target = ws.inbox_normal / SAMPLE
        if not target.exists():
            tmp = target.with_name(f".{SAMPLE}.part")
            shutil.copyfile(sample_path(), tmp)
            tmp.rename(target)
        console.print(f"sample dataset: {target}")
    console.print(f"next: finetuned run --root {ws.root}")

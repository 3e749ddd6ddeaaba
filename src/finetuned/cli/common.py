"""What every command shares: the --root option and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from finetuned.workspace import Workspace

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

RootOption = Annotated[
    Path | None,
    typer.Option("--root", "-r", envvar="FINETUNED_ROOT", show_envvar=True,
                 help="The workspace folder (default: the current folder)."),
]


def fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}", highlight=False)
    raise typer.Exit(code)


def workspace(root: Path | None, must_exist: bool = True) -> Workspace:
    ws = Workspace.at(root)
    if must_exist and not ws.config_path.exists() and not ws.control.exists():
        fail(f"{ws.root} is not a finetuned workspace (run: finetuned init {ws.root})")
    return ws



def examples_kept(help_text: str) -> str:
    """Help whose examples stay one per line: click rewraps every paragraph except one that starts with \\b."""
    return help_text.replace("\nexamples:\n", "\n\b\nexamples:\n")

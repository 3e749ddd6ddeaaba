"""What every command shares: the --root option and one-line errors, from `fail` or from any FinetunedError."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import click
import typer
from rich.console import Console
from typer.core import TyperGroup

from finetuned.errors import FinetunedError
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


class Handled(TyperGroup):
    """The command group that turns a FinetunedError from any command into `fail`'s line and its exit code.

    Here rather than around `app()` in `main`: tests that invoke the click command directly get it too,
    and subcommand groups (`service`, `config`) run inside this one's `invoke`, so they are covered.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FinetunedError as exc:
            fail(exc.line(), exc.exit_code)


def workspace(root: Path | None, must_exist: bool = True) -> Workspace:
    ws = Workspace.at(root)
    if must_exist and not _is_workspace(ws):
        fail(f"{ws.root} is not a finetuned workspace ({_where_to_look(ws, root)})")
    return ws


def _is_workspace(ws: Workspace) -> bool:
    return ws.config_path.exists() or ws.control.exists()


def _where_to_look(ws: Workspace, root: Path | None) -> str:
    """The likeliest fix: `make run` made ./workspace beside a checkout; else say how to name one or make one."""
    if root is None and _is_workspace(Workspace.at(Path("workspace"))):
        return "the workspace here is ./workspace: add --root workspace, or set FINETUNED_ROOT=workspace"
    if (ws.root / ".git").exists() or (ws.root / "pyproject.toml").exists():
        return ("this looks like a source checkout: name a workspace with --root or FINETUNED_ROOT, "
                "or make one: finetuned init workspace")
    return f"name one with --root or FINETUNED_ROOT, or make one here: finetuned init {ws.root}"



def examples_kept(help_text: str) -> str:
    """Help whose examples stay one per line: click rewraps every paragraph except one that starts with \\b."""
    return help_text.replace("\nexamples:\n", "\n\b\nexamples:\n")

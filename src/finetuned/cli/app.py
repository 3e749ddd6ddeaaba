"""The `finetuned` command: wires one function per subcommand."""

from __future__ import annotations

import typer

from finetuned.cli import add, cancel, controls, init, queue, run, status

app = typer.Typer(
    name="finetuned",
    help="A fine-tuning daemon: drop JSONL files into inbox/, get trained adapters in models/adapters/.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # locals may hold a monitor token
)
app.command(help=init.HELP)(init.init)
app.command(help=run.HELP)(run.run)
app.command(help=status.HELP)(status.status)
app.command(help=queue.HELP)(queue.queue)
app.command(help=add.HELP)(add.add)
for control in (controls.pause, controls.resume, controls.stop, controls.skip):
    app.command()(control)
app.command(help=cancel.CANCEL_HELP)(cancel.cancel)
app.command(help=cancel.FRONT_HELP)(cancel.front)


def main() -> None:
    app()

"""The `finetuned` command: wires one function per subcommand."""

from __future__ import annotations

import typer

from finetuned.cli import (
    add,
    cancel,
    chat,
    check,
    consolidate,
    controls,
    doctor,
    evaluate,
    export,
    gc,
    init,
    queue,
    run,
    service,
    status,
    versions,
)

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
app.command(help=check.HELP)(check.check)
for control in (controls.pause, controls.resume, controls.stop, controls.skip):
    app.command()(control)
app.command(help=cancel.CANCEL_HELP)(cancel.cancel)
app.command(help=cancel.FRONT_HELP)(cancel.front)
app.command(help=versions.VERSIONS_HELP)(versions.versions)
app.command(help=versions.USE_HELP)(versions.use)
app.command(help=versions.ROLLBACK_HELP)(versions.rollback)
app.command(help=consolidate.HELP)(consolidate.consolidate)
app.command(help=export.HELP)(export.export)
app.command("eval", help=evaluate.HELP)(evaluate.eval_)
app.command(help=chat.HELP)(chat.chat)
app.command(help=gc.GC_HELP)(gc.gc)
app.command(help=gc.KEEP_HELP)(gc.keep)
app.command(help=doctor.HELP)(doctor.doctor)
app.add_typer(service.app)


def main() -> None:
    app()

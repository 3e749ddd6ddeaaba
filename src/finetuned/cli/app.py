"""The `finetuned` command: wires one function per subcommand."""

from __future__ import annotations

import typer

from finetuned.cli import (
    add,
    cancel,
    chat,
    check,
    config,
    consolidate,
    controls,
    doctor,
    evaluate,
    export,
    gc,
    init,
    queue,
    retry,
    run,
    service,
    status,
    versions,
)
from finetuned.cli.common import Handled, examples_kept

app = typer.Typer(
    name="finetuned",
    help="A fine-tuning daemon: drop JSONL files into inbox/, get trained adapters in models/adapters/.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_show_locals=False,  # locals may hold a monitor token
    cls=Handled,  # the one place a FinetunedError is reported
)
app.command(help=examples_kept(init.HELP))(init.init)
app.command(help=examples_kept(run.HELP))(run.run)
app.command(help=examples_kept(status.HELP))(status.status)
app.command(help=examples_kept(queue.HELP))(queue.queue)
app.command(help=examples_kept(add.HELP))(add.add)
app.command(help=examples_kept(check.HELP))(check.check)
for control in (controls.pause, controls.resume, controls.stop, controls.skip):
    app.command()(control)
app.command(help=examples_kept(cancel.CANCEL_HELP))(cancel.cancel)
app.command(help=examples_kept(cancel.FRONT_HELP))(cancel.front)
app.command(help=examples_kept(retry.HELP))(retry.retry)
app.command(help=examples_kept(versions.VERSIONS_HELP))(versions.versions)
app.command(help=examples_kept(versions.USE_HELP))(versions.use)
app.command(help=examples_kept(versions.ROLLBACK_HELP))(versions.rollback)
app.command(help=examples_kept(consolidate.HELP))(consolidate.consolidate)
app.command(help=examples_kept(export.HELP))(export.export)
app.command("eval", help=examples_kept(evaluate.HELP))(evaluate.eval_)
app.command(help=examples_kept(chat.HELP))(chat.chat)
app.command(help=examples_kept(gc.GC_HELP))(gc.gc)
app.command(help=examples_kept(gc.KEEP_HELP))(gc.keep)
app.command(help=examples_kept(doctor.HELP))(doctor.doctor)
app.add_typer(service.app)
app.add_typer(config.app)


def main() -> None:
    app()

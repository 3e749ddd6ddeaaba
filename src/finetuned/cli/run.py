"""finetuned run: the daemon."""

from __future__ import annotations

from typing import Annotated

import typer

from finetuned.cli.common import RootOption, fail
from finetuned.config import ConfigError
from finetuned.logs import setup_logging
from finetuned.workspace import Workspace

HELP = """Run the daemon: watch the inbox, queue files, train them one after another.

Stops cleanly on Ctrl+C or SIGTERM (the job is checkpointed and resumes next time);
a second Ctrl+C stops at once.

examples:
  finetuned run --root ~/training
  FINETUNED_ROOT=~/training finetuned run --no-monitor
"""


def run(
    root: RootOption = None,
    no_monitor: Annotated[bool, typer.Option("--no-monitor", help="Do not serve the web monitor.")] = False,
) -> None:
    ws = Workspace.at(root)
    try:
        config = ws.create()
    except ConfigError as exc:
        fail(exc.line(), 2)  # not ConfigError's 1: this command always answered an unusable config.json with 2
    setup_logging(ws, "daemon")
    from finetuned.daemon.daemon import Daemon  # after the config check: a typo answers at once

    Daemon(ws, config, monitor=not no_monitor).run()

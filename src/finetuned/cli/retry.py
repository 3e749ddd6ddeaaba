"""finetuned retry: put a failed file back in the queue."""

from __future__ import annotations

from typing import Annotated

import typer

from finetuned.cli.cancel import queue_action
from finetuned.cli.common import RootOption, workspace

HELP = """Put a failed job's file back in the queue, behind its priority class.

Its error report goes (the job's history keeps the reason); the file is checked
again like a new one, and the job resumes from its last checkpoint if it has one,
with the settings it started with (config.json edits since do not reach it).
--fresh-config starts it over with config.json as it is now: its checkpoints and
metrics go. Through the daemon when it runs, directly when it does not.

examples:
  finetuned retry 20251116_014600
  finetuned retry 20251116_014600 --fresh-config   # after config set training.batch_size 2
"""


def retry(
    job_id: Annotated[str, typer.Argument(help="The failed job's id.")],
    fresh_config: Annotated[bool, typer.Option(
        "--fresh-config", help="Start over with config.json as it is now, not the settings it started with.",
    )] = False,
    root: RootOption = None,
) -> None:
    queue_action(workspace(root), "retry", job_id, fresh_config)

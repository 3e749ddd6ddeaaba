"""What a user is told when finetuned cannot do what was asked: one base class, one CLI handler.

The taxonomy has two halves. `FinetunedError` is the half a command meets: every error a user sees
as a one-line message (a config.json that cannot be used, a job that does not exist, a version
switch the gate refuses, a monitor that cannot start) is a subclass carrying the exit code the CLI
exits with and, where one helps, a hint. The CLI catches `FinetunedError` once, in the group that
runs every command (`cli/common.py`), and prints `error: <message>` (` (<hint>)` after it when there
is one) on stderr before exiting with `exit_code`. The other half is `FailKind`, below: how a job
that failed in a worker ends (data, config, crash, disk, memory, diverged), reported in
`processes/protocol.py`'s `Failed` and recorded on the job by the daemon instead of raised at a user.

The classes live beside the code that raises them, each a subclass of this base (or of
`lifecycle.errors.LifecycleError`, itself one). Exit codes: 2 where the daemon cannot start as
configured (`MonitorRefused`), 1 for everything else. `ConfigError` is 1 too, but `init`, `run`,
`gc` and `versions` answer a workspace config.json that cannot be loaded with 2, as they always did
(the table for users: docs/operations.md, "Exit codes").

Not every exception is one: `RecordProblem` (one bad record, folded into a `DataError` report),
`InvalidTransition` (a programming error in the job state machine), `CheckpointMismatch` (a
worker-side failure that reaches the user as a job's `FailKind`) and `fsio.NotARegularFile` (an OSError
its readers turn into a file's report or a `ConfigError`) never reach a command as such.

This module is the base layer: it imports nothing from finetuned, so any module may import it.
"""

from __future__ import annotations

import re
from enum import Enum


class FinetunedError(Exception):
    """An error a user acts on; its message is one line, `exit_code` is what the CLI exits with."""

    exit_code: int = 1
    hint: str | None = None

    def __init__(self, *args: object, hint: str | None = None) -> None:
        super().__init__(*args)
        if hint is not None:
            self.hint = hint  # this occurrence knows better than the class what to do next

    @property
    def message(self) -> str:
        return str(self)

    @property
    def kind(self) -> str:
        """The class name in snake_case (`config_error`, `job_not_found`): stable for JSON and scripts."""
        return re.sub(r"(?<!^)(?=[A-Z])", "_", type(self).__name__).lower()

    def line(self) -> str:
        """The message with its hint, the one line the CLI prints after `error:`."""
        return f"{self.message} ({self.hint})" if self.hint else self.message


class FailKind(str, Enum):
    """How a failed job ends: the daemon fails it, or retries it from its last checkpoint."""

    DATA = "data"  # the file cannot train (refused, no step): it fails with its error report
    DIVERGED = "diverged"  # the loss became NaN or infinite at a step: it fails, the last good checkpoint kept
    CRASH = "crash"  # the worker raised or died: retried from the last checkpoint, a limited number of times
    DISK = "disk"  # a write found the disk full: the daemon holds the line until there is space, no retry counted
    # The settings cannot train (base model, LoRA targets, starting adapter): never retried. The workspace's
    # config holds the queue until it is fixed; a file's own settings fail that file.
    CONFIG = "config"
    MEMORY = "memory"  # a step ran out of memory even one row at a time: it fails, the last checkpoint kept

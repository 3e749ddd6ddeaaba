"""The control files of SPEC section 2, and their one owner.

`control/.pause` is a level: training stays paused while it exists, and only a
person (or `resume`) removes it. `.stop` and `.skip` are edges: the daemon
consumes them once it has acted, or at once when nothing trains. The CLI, the
monitor and the daemon all come here, so precedence, consumption and the
messages a user reads are decided in one place.

The lifecycle's quiet window (a version switch) is not a control: it holds its
own lock (`control/.quiet.lock`), never the user's `.pause`, so a pause made
during a switch is the user's and stays.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from finetuned.fsio import remove_file
from finetuned.lock import holder
from finetuned.workspace import Workspace


class Control(str, Enum):
    PAUSE = "pause"
    STOP = "stop"
    SKIP = "skip"


# When several are present, the strongest acts: a skip beats a stop, a stop beats a pause.
PRECEDENCE = (Control.SKIP, Control.STOP, Control.PAUSE)

MESSAGES = {
    Control.PAUSE: "pause requested: training stops at the next step boundary",
    Control.STOP: "stop requested: the job is checkpointed and goes back to the queue",
    Control.SKIP: "skip requested: the job is abandoned (its checkpoint kept) and the next one starts",
}
RESUMED = "resumed"
NOT_PAUSED = "not paused: nothing to do"


def path(ws: Workspace, control: Control) -> Path:
    return {Control.PAUSE: ws.pause_file, Control.STOP: ws.stop_file, Control.SKIP: ws.skip_file}[control]


def request(ws: Workspace, control: Control) -> str:
    """Ask for `control` as a person's `touch` would; returns what the user is told."""
    target = path(ws, control)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch()
    return MESSAGES[control]


def resume(ws: Workspace) -> str:
    """Lift a pause (remove `.pause`); returns what the user is told."""
    if not paused(ws):
        return NOT_PAUSED
    remove_file(ws.pause_file)
    return RESUMED


def paused(ws: Workspace) -> bool:
    return ws.pause_file.exists()


def requested(ws: Workspace, control: Control) -> bool:
    return path(ws, control).exists()


def pending(ws: Workspace) -> Control | None:
    """The control that acts now, by precedence, or None."""
    return next((c for c in PRECEDENCE if requested(ws, c)), None)


def consume(ws: Workspace, control: Control) -> None:
    """A stop or skip has been handled; a pause is a level and is never consumed."""
    if control is not Control.PAUSE:
        remove_file(path(ws, control))


def consume_stray(ws: Workspace) -> list[Control]:
    """Remove a stop or skip that has nothing to act on (nothing trains); returns what was removed."""
    stray = [c for c in (Control.SKIP, Control.STOP) if requested(ws, c)]
    for control in stray:
        consume(ws, control)
    return stray


def quiet(ws: Workspace) -> bool:
    """Whether the lifecycle holds the quiet window: no job may start until it ends."""
    return holder(ws.quiet_lock) is not None

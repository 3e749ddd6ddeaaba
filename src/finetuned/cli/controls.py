"""finetuned pause | resume | stop | skip: the control files, touched as a person would."""

from __future__ import annotations

from finetuned import controls
from finetuned.cli.common import RootOption, console, workspace
from finetuned.controls import Control


def pause(root: RootOption = None) -> None:
    """Pause training: checkpoint at the next step and wait (touches control/.pause)."""
    console.print(controls.request(workspace(root), Control.PAUSE))


def resume(root: RootOption = None) -> None:
    """Resume paused training (removes control/.pause)."""
    console.print(controls.resume(workspace(root)))


def stop(root: RootOption = None) -> None:
    """Checkpoint the current job, put it back in the queue, start the next (touches control/.stop)."""
    console.print(controls.request(workspace(root), Control.STOP))


def skip(root: RootOption = None) -> None:
    """Abandon the current job (kept for recovery), start the next (touches control/.skip)."""
    console.print(controls.request(workspace(root), Control.SKIP))

"""finetuned pause | resume | stop | skip: the control files, touched as a person would."""

from __future__ import annotations

from pathlib import Path

from finetuned.cli.common import RootOption, console, workspace
from finetuned.fsio import remove_file


def _touch(path: Path, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    console.print(what)


def pause(root: RootOption = None) -> None:
    """Pause training: checkpoint at the next step and wait (touches control/.pause)."""
    _touch(workspace(root).pause_file, "pause requested: training stops at the next step boundary")


def resume(root: RootOption = None) -> None:
    """Resume paused training (removes control/.pause)."""
    ws = workspace(root)
    if not ws.pause_file.exists():
        console.print("not paused: nothing to do")
        return
    remove_file(ws.pause_file)
    console.print("resumed")


def stop(root: RootOption = None) -> None:
    """Checkpoint the current job, put it back in the queue, start the next (touches control/.stop)."""
    _touch(workspace(root).stop_file, "stop requested")


def skip(root: RootOption = None) -> None:
    """Abandon the current job (kept for recovery), start the next (touches control/.skip)."""
    _touch(workspace(root).skip_file, "skip requested")

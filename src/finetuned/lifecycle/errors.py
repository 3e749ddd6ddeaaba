"""The errors of the model-line commands: each message is one line a user can act on."""

from __future__ import annotations

from pathlib import Path

from finetuned import disk
from finetuned.errors import FinetunedError


class LifecycleError(FinetunedError):
    """A lifecycle action that cannot be done as asked; nothing was changed."""


class UnfinishedWork(LifecycleError):
    """Switching the line's base now would strand training that is not in any version."""


class DiskSpaceError(LifecycleError):
    """Writing would leave less free space than `lifecycle.min_free_gb`."""


def require_space(path: Path, need_bytes: int, min_free_gb: float, what: str) -> None:
    """Refuse, before anything is written, a write that would leave less than `min_free_gb` free."""
    why = disk.shortfall(path, need_bytes, min_free_gb, what)
    if why is not None:
        raise DiskSpaceError(why)

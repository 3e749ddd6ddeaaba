"""The errors of the model-line commands: each message is one line a user can act on."""

from __future__ import annotations


class LifecycleError(Exception):
    """A lifecycle action that cannot be done as asked; nothing was changed."""


class UnfinishedWork(LifecycleError):
    """Switching the line's base now would strand training that is not in any version."""


class DiskSpaceError(LifecycleError):
    """Writing would leave less free space than `lifecycle.min_free_gb`."""

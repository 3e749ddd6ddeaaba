"""A full disk holds the line instead of ending the daemon (docs/operations.md, "Under faults").

Any write of a loop step that finds no space (ENOSPC, a quota) lands here: the worker is
stopped (its job resumes from its last checkpoint) and memory is dropped, since a step cut
short may have changed it half-way; the records on disk, whole because every write is
atomic, are the truth again, repaired as at a restart once there is space.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from finetuned import disk
from finetuned.daemon.statefiles import StateWriter
from finetuned.fsio import is_disk_full
from finetuned.processes.protocol import WAITING_FOR_DISK
from finetuned.queue.inbox import Inbox
from finetuned.queue.store import JobStore
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

DISK_RETRY_SECONDS = 5.0  # how often a line held by a full disk looks for space again
RESUME_FREE_BYTES = 8 << 20  # free space that counts as "space is back" (not just the status files' reserve)


class DiskHold:
    """Why the line holds for a full disk ("" while it does not), and the look for space that ends it.

    `abandon` stops the work in memory (the worker, the preparer); `write_state` writes the
    status files (forced or not), `notify` tells the user.
    """

    def __init__(self, ws: Workspace, store: JobStore, inbox: Inbox, state_writer: StateWriter,
                 abandon: Callable[[], None], write_state: Callable[..., None],
                 notify: Callable[..., None]) -> None:
        self.ws, self.store, self.inbox, self.state_writer = ws, store, inbox, state_writer
        self._abandon, self._write_state, self._notify = abandon, write_state, notify
        self.reason = ""
        self._retry_at = 0.0

    def recover(self, why: str = "") -> None:
        """Rebuild the queue from the records on disk, repairing what was cut short (startup, a full disk)."""
        self.store.load().recover(why)
        for path in self.store.held:
            self.inbox.refuse(path)

    def guarded(self, step: Callable[[], None]) -> None:
        """One step of the loop; a full disk holds the line instead of ending the daemon."""
        try:
            step()
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            self._hold(exc)

    def _hold(self, exc: OSError) -> None:
        where = f" ({exc.filename})" if exc.filename else ""
        self.reason = (f"{WAITING_FOR_DISK}: the disk is full{where}; training holds and goes on by itself "
                       "once space is freed (finetuned gc --dry-run shows what retention can remove)")
        log.error("%s", self.reason)
        self._notify("paused_for_disk", reason=self.reason)
        self._abandon()
        self.state_writer.release_reserve()
        self.store.load()
        self._retry_at = time.time() + DISK_RETRY_SECONDS
        self.write_state_if_room(force=True)

    def wait(self) -> None:
        """A loop step while the line holds: look for space now and then, keep the heartbeat going."""
        if time.time() >= self._retry_at and disk.free_bytes(self.ws.root) >= RESUME_FREE_BYTES:
            self._retry_at = time.time() + DISK_RETRY_SECONDS
            self.state_writer.reserve()  # first: the next full disk must find it in place
            try:
                self.recover("the disk was full")
            except OSError as exc:
                if not is_disk_full(exc):
                    raise
                self.store.load()  # a repair cut short: back to what the disk says
            else:
                log.info("disk space is back: the line goes on")
                self.reason = ""
                self.write_state_if_room(force=True)
                return
        self.write_state_if_room()

    def write_state_if_room(self, force: bool = False) -> None:
        try:
            self._write_state(force=force)
        except OSError as exc:
            if not is_disk_full(exc):
                raise

"""Scheduled consolidation (`lifecycle.consolidate`), run by the daemon only while nothing trains.

It runs `finetuned consolidate` in its own process, so the daemon's memory stays
small; the queue waits behind it, since it may switch the line to a new base.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from finetuned.config import ConfigError
from finetuned.lifecycle.schedule import consolidation_due
from finetuned.workspace import Workspace

log = logging.getLogger("finetuned.daemon")

CHECK_SECONDS = 60


class ScheduledConsolidation:
    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.process: subprocess.Popen[bytes] | None = None
        self._checked = 0.0

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def tick(self, idle: bool) -> bool:
        """Start one when due and `idle`, reap a finished one; True when something changed."""
        if self.process is not None:
            if self.process.poll() is None:
                return False
            code = self.process.returncode
            (log.info if code == 0 else log.error)("scheduled consolidation ended (exit code %d)", code)
            self.process = None
            return True
        if not idle or time.time() - self._checked < CHECK_SECONDS:
            return False
        self._checked = time.time()
        try:
            why = consolidation_due(self.ws, self.ws.load_config())
        except ConfigError:
            return False
        if why is None:
            return False
        log.info("consolidating the model line: %s", why)
        with open(self.ws.consolidate_log, "ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "finetuned", "consolidate", "--root", str(self.ws.root),
                 "--note", f"scheduled: {why}"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        return True

    def wait(self) -> None:
        if self.running:
            log.info("waiting for the consolidation in progress to finish")
            assert self.process is not None
            self.process.wait()

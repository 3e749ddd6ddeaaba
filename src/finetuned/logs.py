"""Logging into `logs/NAME_YYYYMMDD.log`, one line per event, a new file each day."""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from pathlib import Path

from finetuned.workspace import Workspace

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class DailyFileHandler(logging.FileHandler):
    """Writes to `logs/PREFIX_YYYYMMDD.log`, switching file when the date changes."""

    def __init__(self, ws: Workspace, prefix: str) -> None:
        self.ws = ws
        self.prefix = prefix
        self.day = datetime.now().strftime("%Y%m%d")
        ws.logs.mkdir(parents=True, exist_ok=True)
        super().__init__(self._path(), encoding="utf-8")

    def _path(self) -> Path:
        return self.ws.log_file(self.prefix, self.day)

    def emit(self, record: logging.LogRecord) -> None:
        day = datetime.now().strftime("%Y%m%d")
        if day != self.day:
            self.day = day
            self.close()
            self.baseFilename = str(self._path())
            self.stream = self._open()
        super().emit(record)
        self.flush()

    def handleError(self, record: logging.LogRecord) -> None:
        # A full disk must not turn every later log line into a traceback on stderr: the line is lost, the
        # daemon says why in control/status.json.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handleError(record)


def setup_logging(ws: Workspace, prefix: str, stream: bool = True) -> None:
    handlers: list[logging.Handler] = [DailyFileHandler(ws, prefix)]
    if stream:
        handlers.append(logging.StreamHandler(sys.stderr))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(FORMAT, "%Y-%m-%d %H:%M:%S"))
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    for noisy in ("httpx", "urllib3", "filelock", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # It offers a hub-downloaded CPU kernel we never use (no downloads at run time): not worth a warning a job.
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

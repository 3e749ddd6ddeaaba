"""Logging into `logs/NAME_YYYYMMDD.log`, one line per event, a new file each day.

A message is written printable (`OneLine`): names of dropped files are anyone's text.

Known-harmless library noise (deprecation notices, a kernel bitsandbytes offers to
download, torch's note about bitsandbytes' 4-bit ops) stays out of the daemon and
training logs and out of stderr: it goes to `logs/debug_YYYYMMDD.log` alone.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import datetime
from pathlib import Path

from finetuned.workspace import Workspace

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
DEBUG_PREFIX = "debug"
HARMLESS = (
    # torch, on every QLoRA job: bitsandbytes' 4-bit ops have no autograd kernel of their own (LoRA trains fine).
    "silently incorrect behavior",
    # bitsandbytes offers a hub-downloaded CPU kernel; we never download at run time.
    "Failed to load CPU gemm_4bit_forward from kernels-community",
)


def printable(text: str) -> str:
    """`text` with what a terminal would act on escaped, as Python writes it (`\\n`, `\\x1b`, `\\u202e`):
    a file's name is anyone's text, and a newline in it would forge a log line, an ESC sequence reach
    whoever runs `tail -f`."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class OneLine(logging.Formatter):
    """One event, one line: the message is made printable; a traceback after it keeps its own lines."""

    def __init__(self, fmt: str = FORMAT) -> None:
        super().__init__(fmt, "%Y-%m-%d %H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


def harmless(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    if record.name == "py.warnings" and "FutureWarning" in message:
        return True  # a library's deprecation notice: for its developers, not for the person training
    return any(text in message for text in HARMLESS)


class _Noise(logging.Filter):
    """Passes only the harmless noise (`keep=True`), or everything but it."""

    def __init__(self, keep: bool) -> None:
        super().__init__()
        self.keep = keep

    def filter(self, record: logging.LogRecord) -> bool:
        return harmless(record) == self.keep


class DailyFileHandler(logging.FileHandler):
    """Writes to `logs/PREFIX_YYYYMMDD.log`, switching file when the date changes."""

    def __init__(self, ws: Workspace, prefix: str, delay: bool = False) -> None:
        self.ws = ws
        self.prefix = prefix
        self.day = datetime.now().strftime("%Y%m%d")
        ws.logs.mkdir(parents=True, exist_ok=True)
        super().__init__(self._path(), encoding="utf-8", delay=delay)

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
        handler.addFilter(_Noise(keep=False))
    debug = DailyFileHandler(ws, DEBUG_PREFIX, delay=True)  # no file until there is noise
    debug.addFilter(_Noise(keep=True))
    handlers.append(debug)
    for handler in handlers:
        handler.setFormatter(OneLine())
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)
    logging.captureWarnings(True)  # warnings.warn goes through the filters above, not straight to stderr
    for noisy in ("httpx", "urllib3", "filelock", "watchdog"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def route_library_output() -> None:
    """In the processes that load models: no progress bars on stderr, and transformers' own messages through
    our handlers (and their filters) instead of its private stderr handler."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TQDM_DISABLE"] = "1"
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()

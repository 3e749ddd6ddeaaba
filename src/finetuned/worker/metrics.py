"""Where a job's numbers go: `logs/metrics/JOB_ID.jsonl` and TensorBoard event files.

The loop hands over one record per logged step; the monitor and TensorBoard read
the files, never the loop.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Not curves: counters and clocks.
NOT_SCALARS = ("step", "line_step", "tokens", "step_seconds", "time")


class MetricsLog:
    def __init__(self, jsonl: Path, tensorboard_dir: Path) -> None:
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        self._path = jsonl
        self._file = open(jsonl, "ab", buffering=0)  # noqa: SIM115 - closed in close()
        try:
            from tensorboardX import SummaryWriter

            self._tb: Any = SummaryWriter(logdir=str(tensorboard_dir), flush_secs=30)
        except Exception as exc:  # TensorBoard files are a convenience: training goes on without them
            log.warning("no TensorBoard event files: %s", exc)
            self._tb = None

    def write(self, record: dict[str, Any]) -> None:
        """Append one whole line: a write the disk cuts short is taken back, so no reader sees half a line."""
        line = (json.dumps(record) + "\n").encode()
        fd = self._file.fileno()
        end = os.lseek(fd, 0, os.SEEK_END)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(errno.ENOSPC, "No space left on device (a short write)", str(self._path))
        except OSError:
            os.ftruncate(fd, end)
            raise
        if self._tb is not None:
            for name, value in record.items():  # loss, val_loss, lr, tokens_per_second, an objective's metrics
                if name not in NOT_SCALARS and isinstance(value, int | float):
                    self._tb.add_scalar(f"train/{name}", value, record["line_step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()

"""Checking dropped files in a background thread, one at a time, so a large file never stalls the loop.

Validation reads the file (format, UTF-8, JSON, records) without a tokenizer; the
daemon collects each answer on a later tick and decides what it means.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from finetuned.config import DataSettings
from finetuned.data import Validation, validate_file


class Validator:
    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="validate")
        self._running: dict[str, Future[Validation]] = {}

    @property
    def busy(self) -> bool:
        return bool(self._running)

    @property
    def running(self) -> list[str]:
        """The jobs whose files are being checked now."""
        return list(self._running)

    def checking(self, job_id: str) -> bool:
        return job_id in self._running

    def submit(self, job_id: str, path: Path, settings: DataSettings) -> None:
        """Check the file once: a job already being checked is not submitted again."""
        if job_id not in self._running:
            self._running[job_id] = self._pool.submit(validate_file, path, settings)

    def done(self) -> list[tuple[str, Validation | None, BaseException | None]]:
        """(job id, result, exception) of every check that has finished since the last call."""
        finished: list[tuple[str, Validation | None, BaseException | None]] = []
        for job_id, future in list(self._running.items()):
            if future.done():
                del self._running[job_id]
                error = future.exception()
                finished.append((job_id, None if error else future.result(), error))
        return finished

    def wait(self) -> None:
        """Block until every submitted check has finished (tests drive ticks by hand)."""
        for future in list(self._running.values()):
            future.exception()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

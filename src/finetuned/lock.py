"""One daemon per workspace: an flock the kernel releases when the holder dies."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from finetuned.errors import FinetunedError


class AlreadyRunning(FinetunedError):
    pass


class WorkspaceLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> WorkspaceLock:
        """Take the lock, trying for up to `wait` seconds. A child process forked while the lock was held
        shares it until it execs, so a lock just released in this process can stay taken a moment."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(0.05)
                    continue
                os.close(fd)
                pid = holder(self.path)
                who = f" (pid {pid})" if pid else ""
                raise AlreadyRunning(
                    f"another finetuned daemon{who} is running on {self.path.parent.parent}; stop it first"
                ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> WorkspaceLock:
        return self.acquire()

    def __exit__(self, *_exc: object) -> None:
        self.release()


def holder(path: Path) -> int | None:
    """The pid of a live daemon holding the lock, or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = path.read_text().strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

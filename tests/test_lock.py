"""The workspace locks: a child forked while a lock is held (a notify command starting) shares it until it
execs or exits, so a caller that waits a moment gets the lock its own process just released."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from finetuned.lock import AlreadyRunning, WorkspaceLock, holder


def test_a_lock_shared_with_a_forked_child_is_had_after_a_short_wait(tmp_path: Path) -> None:
    path = tmp_path / "control" / "lifecycle.lock"
    lock = WorkspaceLock(path).acquire()
    child = os.fork()
    if child == 0:  # stands for a notify command between fork and exec
        time.sleep(0.5)
        os._exit(0)
    try:
        lock.release()
        with pytest.raises(AlreadyRunning):
            WorkspaceLock(path).acquire()
        again = WorkspaceLock(path).acquire(wait=5)
        assert holder(path) == os.getpid()
        again.release()
    finally:
        os.waitpid(child, 0)


def test_a_lock_held_elsewhere_is_refused_once_the_wait_is_over(tmp_path: Path) -> None:
    path = tmp_path / "control" / "lifecycle.lock"
    child = os.fork()
    if child == 0:
        WorkspaceLock(path).acquire()
        time.sleep(3)
        os._exit(0)
    try:
        deadline = time.time() + 5
        while holder(path) is None and time.time() < deadline:
            time.sleep(0.02)
        started = time.monotonic()
        with pytest.raises(AlreadyRunning, match=f"pid {child}"):
            WorkspaceLock(path).acquire(wait=0.3)
        assert time.monotonic() - started >= 0.3
    finally:
        os.waitpid(child, 0)

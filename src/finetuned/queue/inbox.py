"""Finding dropped files that are complete.

A file is taken only once its size and modification time have not changed for
`inbox.settle_seconds`, so a slow copy is never read half-written. Hidden and
temporary names are someone's work in progress and are left alone; so is a folder,
said once in the log. A sidecar (`NAME.jsonl.config.json`, the file's own settings) is
never data: it waits for its file, and a file whose sidecar is still being written
waits for it. Other things that are not files (a FIFO, a socket) are taken as files
are, and fail with a report: nothing here or after opens them (fsio.open_regular).
"""

from __future__ import annotations

import logging
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from finetuned.config import InboxSettings
from finetuned.overrides import is_sidecar, sidecar_of
from finetuned.queue.job import Priority
from finetuned.workspace import IGNORED_SUFFIXES, Workspace

log = logging.getLogger(__name__)


def is_ignored(name: str) -> bool:
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES)


@dataclass
class _Seen:
    size: int
    mtime_ns: int
    since: float


class Inbox:
    def __init__(self, ws: Workspace, settings: InboxSettings) -> None:
        self.ws = ws
        self.settings = settings
        self._seen: dict[Path, _Seen] = {}
        # Files the daemon could not take, by (size, mtime): tried again only once they change.
        self._refused: dict[Path, tuple[int, int]] = {}
        self._sidecars: set[Path] = set()  # settled sidecars: waiting for their file, not for themselves
        self._folders: set[Path] = set()  # folders in the inbox, each said once

    def folders(self) -> list[tuple[Path, Priority]]:
        return [(self.ws.inbox_priority, "high"), (self.ws.inbox_normal, "normal"), (self.ws.inbox, "normal")]

    def scan(self, now: float | None = None) -> list[tuple[Path, Priority]]:
        """Settled files, priority first, each class oldest first."""
        now = time.time() if now is None else now
        ready: list[tuple[float, int, Path, Priority]] = []
        present: set[Path] = set()
        listed: set[Path] = set()
        for rank, (folder, priority) in enumerate(self.folders()):
            try:
                entries = list(folder.iterdir())
            except FileNotFoundError:
                continue
            for path in entries:
                if is_ignored(path.name):
                    continue
                listed.add(path)
                try:
                    st = path.lstat()
                except FileNotFoundError:
                    continue
                if stat.S_ISDIR(st.st_mode):
                    self._folder(path)
                    continue
                if self._refused.get(path) == (st.st_size, st.st_mtime_ns):
                    continue
                present.add(path)
                seen = self._seen.get(path)
                if seen is None or (seen.size, seen.mtime_ns) != (st.st_size, st.st_mtime_ns):
                    self._seen[path] = _Seen(st.st_size, st.st_mtime_ns, now)
                    continue
                settle = self.settings.settle_seconds
                if now - seen.since >= settle and now - st.st_mtime_ns / 1e9 >= settle:
                    if is_sidecar(path.name):
                        self._sidecars.add(path)
                    else:
                        ready.append((st.st_mtime_ns / 1e9, rank, path, priority))
        for gone in set(self._seen) - present:
            del self._seen[gone]
        for gone in set(self._refused) - listed:
            del self._refused[gone]
        self._folders &= listed
        self._sidecars &= present
        ready = [r for r in ready if not self._unsettled(r[2])]
        ready.sort(key=lambda r: (r[1] > 0, r[0]))
        return [(path, priority) for _, _, path, priority in ready]

    def _folder(self, path: Path) -> None:
        """A folder is never taken (nor what is in it); the inbox's own folders aside, it is said once."""
        if path in self._folders or path in (self.ws.inbox_priority, self.ws.inbox_normal):
            return
        self._folders.add(path)
        where = path.relative_to(self.ws.root)
        log.warning("%s is a folder: left alone (only files directly in the inbox are taken)", where)

    def _unsettled(self, data_file: Path) -> bool:
        """A file's sidecar is there but still changing: the file waits for it."""
        sidecar = sidecar_of(data_file)
        return sidecar is not None and sidecar not in self._sidecars

    def forget(self, path: Path) -> None:
        self._seen.pop(path, None)
        self._sidecars.discard(path)

    def refuse(self, path: Path) -> None:
        """Leave `path` alone until it changes (the daemon could not take it, and said why once)."""
        try:
            st = path.lstat()
        except OSError:
            return
        self._refused[path] = (st.st_size, st.st_mtime_ns)

    @property
    def waiting(self) -> bool:
        """Files are being watched for settling: scan again soon."""
        return bool(set(self._seen) - self._sidecars)


READ_ONLY_EVENTS = frozenset({"opened", "closed_no_write"})


class Wakeup:
    """File-system events wake the daemon at once; without them it still polls."""

    def __init__(self, folders: list[Path]) -> None:
        self.event = threading.Event()
        self._observer = None
        try:
            from watchdog.events import FileSystemEvent, FileSystemEventHandler
            from watchdog.observers import Observer

            event = self.event

            class _Handler(FileSystemEventHandler):
                def on_any_event(self, fs_event: FileSystemEvent) -> None:
                    # Reading a file is no news: the daemon's own reads of control/asks/ would wake it forever.
                    if fs_event.event_type not in READ_ONLY_EVENTS:
                        event.set()

            observer = Observer()
            for folder in folders:
                observer.schedule(_Handler(), str(folder), recursive=True)
            observer.daemon = True
            observer.start()
            self._observer = observer
        except Exception:  # inotify limits, exotic file systems: polling still works
            self._observer = None

    @property
    def watching(self) -> bool:
        return self._observer is not None

    def wait(self, timeout: float) -> None:
        self.event.wait(timeout)
        self.event.clear()

    def close(self) -> None:
        if self._observer is not None:
            self._observer.stop()

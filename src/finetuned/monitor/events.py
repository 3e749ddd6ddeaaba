"""The event stream's one producer: what changed, built once for every connected page.

One task polls the state files while at least one page is connected (a `stat` of each,
every POLL_SECONDS); a payload is built only when a file's (inode, mtime, size) moved,
built once, encoded once, and the same bytes go to every page. A page that connects
gets a snapshot first: the latest payload of each kind and the current job's metrics
history in columns (one array per field), built once for all the pages that connect
in the same cycle. A page that cannot keep up is dropped; its browser reconnects and
gets a fresh snapshot. All of a cycle's changes go out in one write, so a hundred pages
cost a hundred socket writes per cycle that saw a change, not a hundred payloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi.sse import format_sse_event

from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files, signature
from finetuned.monitor.views import asks_view, downsample, health_view, queue_view, status_view

log = logging.getLogger(__name__)

# Often enough for "within a second", rarely enough that watching never competes with training for a core.
POLL_SECONDS = 0.5
PING_SECONDS = 15.0  # a comment line on an idle stream, so proxies and browsers keep it open
MAX_POINTS = 4000
MAX_ROUNDS = 50
BACKLOG = 256  # cycles' writes queued for one page before it counts as gone
HISTORY_FIELDS = ("step", "loss", "val_loss")  # always there, null or not: what the main chart draws
SNAPSHOT_KINDS = ("status", "queue", "jobs", "health", "asks", "previews")
PING = b": ping\n\n"


def _finite(value: Any) -> Any:
    """NaN and infinities are not JSON: a browser could not parse the event."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def encode(event: str, data: Any, event_id: int | None = None, retry: int | None = None) -> bytes:
    text = json.dumps(_finite(data), separators=(",", ":"), ensure_ascii=False, default=str)
    return format_sse_event(data_str=text, event=event, id=None if event_id is None else str(event_id), retry=retry)


def columns(job_id: str, points: list[dict[str, Any]]) -> dict[str, Any]:
    """A job's metrics as one array per field (null where a point lacks it): a fraction of the bytes of point
    objects. Every field a point has comes along: the page charts evaluation scores and rewards too."""
    names = list(dict.fromkeys([*HISTORY_FIELDS, *(name for p in points for name in p)]))
    return {"job_id": job_id, "reset": True, "total": len(points),
            "columns": {name: [p.get(name) for p in points] for name in names}}


class Changes:
    """What changed in the files since the last look, and the latest payload of each kind."""

    def __init__(self, files: Files, settings: MonitorSettings) -> None:
        self.files = files
        self.settings = settings
        self.seen: dict[str, Any] = {}
        self.latest: dict[str, tuple[str, Any]] = {}  # kind -> (event, payload)
        self.metrics_job: str | None = None
        self.metrics_step = 0
        self.current: str | None = None  # the job training now, if any

    def _changed(self, name: str, key: Any) -> bool:
        if name in self.seen and self.seen[name] == key:
            return False
        self.seen[name] = key
        return True

    def poll(self) -> list[tuple[str, Any]]:
        files, ws = self.files, self.files.ws
        out: list[tuple[str, Any]] = []
        if self._changed("status", files.signatures([ws.status_json, ws.training_status_json, ws.queue_status_json])):
            out.append(("status", status_view(files, self.settings)))
        if self._changed("queue", signature(ws.queue_json)):
            out.append(("queue", queue_view(files)))
        if self._changed("jobs", signature(ws.jobs)):
            out.append(("jobs", {"changed": True}))
        if self._changed("health", signature(ws.system_health_json)):
            out.append(("health", health_view(files)))
        if self._changed("asks", signature(ws.asks)):  # a folder's mtime moves with every question and answer
            out.append(("asks", asks_view(files)))
        job = self.current = files.training_job_id()
        if job is not None:
            metrics = self._metrics(job)
            if metrics is not None:
                out.append(("metrics", metrics))
            if self._changed("previews", (job, signature(ws.previews_file(job)))):
                out.append(("previews", {"job_id": job, "rounds": files.previews(job)[-MAX_ROUNDS:]}))
        for event, payload in out:
            if event in SNAPSHOT_KINDS:
                self.latest[event] = (event, payload)
        return out

    def _metrics(self, job: str) -> dict[str, Any] | None:
        """The current job's new points; its whole history (reset) when the job changed."""
        if not self._changed("metrics", (job, signature(self.files.ws.metrics_file(job)))):
            return None
        points = self.files.metrics(job)
        if job != self.metrics_job:
            self.metrics_job = job
            self.metrics_step = points[-1]["step"] if points else 0
            return columns(job, downsample(points, MAX_POINTS))
        new = [p for p in points if p["step"] > self.metrics_step]
        if not new:
            return None
        self.metrics_step = new[-1]["step"]
        return {"job_id": job, "reset": False, "points": new}

    def history(self) -> dict[str, Any] | None:
        """The current job's metrics up to the last point sent to the pages already connected."""
        job = self.metrics_job
        if job is None or job != self.current:
            return None
        points = [p for p in self.files.metrics(job) if p["step"] <= self.metrics_step]
        return columns(job, downsample(points, MAX_POINTS))


class EventHub:
    """Every page's event stream, fed by one producer task on the server's loop."""

    def __init__(self, files: Files, settings: MonitorSettings, stopping: threading.Event) -> None:
        self.changes = Changes(files, settings)
        self.stopping = stopping
        self._pages: set[asyncio.Queue[bytes | None]] = set()
        self._arriving: set[asyncio.Queue[bytes | None]] = set()
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sent = 0
        self._encoded: dict[str, bytes] = {}  # kind -> its latest event, encoded once
        self._history: tuple[Any, bytes | None] = (None, None)  # (job, step) -> encoded history

    @property
    def pages(self) -> int:
        return len(self._pages) + len(self._arriving)

    async def stream(self) -> AsyncIterator[bytes]:
        """One page's events: hello, a snapshot, then every change, pings while nothing changes."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(BACKLOG)
        self._arriving.add(queue)
        self._ensure_producer()
        try:
            yield encode("hello", {"now": time.time()}, retry=2000)
            while not self.stopping.is_set():
                try:
                    chunk = await asyncio.wait_for(queue.get(), PING_SECONDS)
                except asyncio.TimeoutError:  # not the builtin before Python 3.11
                    yield PING
                    continue
                if chunk is None:
                    return
                yield chunk
        finally:
            self._arriving.discard(queue)
            self._pages.discard(queue)

    def _ensure_producer(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._produce())
        else:
            self._wake.set()  # a new page: no need to wait out the poll interval for its snapshot

    async def _produce(self) -> None:
        try:
            while self.pages and not self.stopping.is_set():
                arriving = list(self._arriving)
                try:
                    changes, snapshot = await asyncio.to_thread(self._cycle, bool(arriving))
                except Exception:  # a bug in one view must not end every page's stream for good
                    log.exception("the event stream could not read the workspace's files")
                    changes, snapshot = [], []
                if changes:  # one write per page per cycle, however many kinds changed
                    self._broadcast(b"".join(changes))
                for queue in arriving:
                    if queue in self._arriving:  # still connected
                        self._arriving.discard(queue)
                        self._pages.add(queue)
                        if snapshot:
                            queue.put_nowait(b"".join(snapshot))
                self._wake.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)
        finally:
            if self.stopping.is_set():
                for queue in [*self._pages, *self._arriving]:
                    self._end(queue)

    def _cycle(self, snapshot: bool) -> tuple[list[bytes], list[bytes]]:
        """Read what changed and encode it once (in a thread: the files are read here, not on the loop)."""
        encoded = []
        for event, payload in self.changes.poll():
            self._sent += 1
            chunk = encode(event, payload, self._sent)
            encoded.append(chunk)
            if event in SNAPSHOT_KINDS:
                self._encoded[event] = chunk
        if not snapshot:
            return encoded, []
        chunks = [self._encoded[kind] for kind in SNAPSHOT_KINDS if kind in self._encoded]
        history = self._encoded_history()
        return encoded, chunks + ([history] if history is not None else [])

    def _encoded_history(self) -> bytes | None:
        key = (self.changes.metrics_job, self.changes.metrics_step)
        if self._history[0] != key:
            history = self.changes.history()
            self._history = (key, None if history is None else encode("metrics", history))
        return self._history[1]

    def _broadcast(self, chunk: bytes) -> None:
        for queue in list(self._pages):
            try:
                queue.put_nowait(chunk)
            except asyncio.QueueFull:  # a page that stopped reading: it goes, and reconnects to a snapshot
                self._pages.discard(queue)
                self._end(queue)

    @staticmethod
    def _end(queue: asyncio.Queue[bytes | None]) -> None:
        while not queue.empty():
            queue.get_nowait()
        queue.put_nowait(None)

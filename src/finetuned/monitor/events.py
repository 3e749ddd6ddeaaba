"""What changed since a page last looked: the payloads of the event stream.

One watcher per connected page. Each poll costs a `stat` of the state files; a
payload is built only when a file's (inode, mtime, size) moved, so an idle page
costs the daemon next to nothing.
"""

from __future__ import annotations

from typing import Any

from finetuned.config import MonitorSettings
from finetuned.monitor.files import Files, signature
from finetuned.monitor.views import asks_view, downsample, health_view, queue_view, status_view

MAX_POINTS = 4000
MAX_ROUNDS = 50


class EventWatcher:
    def __init__(self, files: Files, settings: MonitorSettings) -> None:
        self.files = files
        self.settings = settings
        self.seen: dict[str, Any] = {}
        self.sent = 0
        self.metrics_job: str | None = None
        self.metrics_step = 0

    def _changed(self, name: str, key: Any) -> bool:
        if name in self.seen and self.seen[name] == key:
            return False
        self.seen[name] = key
        return True

    def next_id(self) -> str:
        self.sent += 1
        return str(self.sent)

    def changes(self) -> list[tuple[str, Any]]:
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
        job = ((files.training() or {}).get("job") or {}).get("id")
        if isinstance(job, str):
            metrics = self._metrics(job)
            if metrics is not None:
                out.append(("metrics", metrics))
            if self._changed("previews", (job, signature(ws.previews_file(job)))):
                out.append(("previews", {"job_id": job, "rounds": files.previews(job)[-MAX_ROUNDS:]}))
        return out

    def _metrics(self, job: str) -> dict[str, Any] | None:
        """The current job's new points; all of them (reset) when the job changed."""
        if not self._changed("metrics", (job, signature(self.files.ws.metrics_file(job)))):
            return None
        points = self.files.metrics(job)
        reset = job != self.metrics_job
        if reset:
            self.metrics_job, self.metrics_step = job, 0
        new = [p for p in points if p["step"] > self.metrics_step]
        if not reset and not new:
            return None
        if points:
            self.metrics_step = points[-1]["step"]
        return {"job_id": job, "reset": reset, "points": downsample(new, MAX_POINTS) if reset else new}

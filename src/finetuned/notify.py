"""Notifications: a JSON POST to `notify.webhook` and/or `notify.command` with the JSON on stdin.

`notify()` returns at once: delivery runs in a thread, so the daemon never
waits on a slow receiver. Each delivery is bounded by `notify.timeout_seconds`;
a failure is logged and never raised. The threads are not daemon threads, so
a `daemon_stopped` sent while shutting down is still delivered (within the
timeout) before the process exits.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import subprocess
import threading
import urllib.error
import urllib.request
from datetime import datetime
from typing import Any

from finetuned.config import NotifySettings

log = logging.getLogger(__name__)

EVENTS = ("job_completed", "job_failed", "job_skipped", "paused_for_disk", "daemon_started", "daemon_stopped",
          "gate_refused")


def message(event: str, payload: dict[str, Any]) -> bytes:
    body = {"event": event, "time": datetime.now().astimezone().isoformat(timespec="seconds"), **payload}
    return json.dumps(body, ensure_ascii=False, default=str).encode("utf-8")


def post(url: str, body: bytes, timeout: float) -> None:
    request = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "finetuned"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # the user's own URL, from config.json
        response.read()


def run_command(command: str, body: bytes, timeout: float, event: str) -> None:
    result = subprocess.run(shlex.split(command), input=body, capture_output=True, timeout=timeout, check=False,
                            env=_env(event))
    if result.returncode != 0:
        tail = result.stderr.decode("utf-8", "replace").strip()[-300:]
        raise RuntimeError(f"exited with {result.returncode}" + (f": {tail}" if tail else ""))


def _env(event: str) -> dict[str, str]:
    return {**os.environ, "FINETUNED_EVENT": event}


def deliver(settings: NotifySettings, event: str, payload: dict[str, Any]) -> list[str]:
    """Send now, in this thread; returns the failures (also logged), never raises."""
    body = message(event, payload)
    failures = []
    if settings.webhook:
        try:
            post(settings.webhook, body, settings.timeout_seconds)
        except (OSError, urllib.error.URLError, ValueError) as exc:
            failures.append(f"notify.webhook: {_without(exc, settings.webhook)}")  # the URL may hold a secret
    if settings.command:
        try:
            run_command(settings.command, body, settings.timeout_seconds, event)
        except (OSError, ValueError, RuntimeError, subprocess.SubprocessError) as exc:
            failures.append(f"notify.command: {_without(exc, settings.command)}")
    for failure in failures:
        log.warning("notification %s not delivered: %s", event, failure)
    return failures


def _without(exc: Exception, secret: str) -> str:
    """An error's text without the setting it names: the log is read by more people than config.json."""
    return str(exc).replace(secret, "***")


def notify(settings: NotifySettings, event: str, payload: dict[str, Any]) -> None:
    """Send `{"event", "time", **payload}` to the webhook and the command in the background."""
    if not (settings.webhook or settings.command):
        return
    if event not in EVENTS:
        log.warning("notification of an unknown event %r sent anyway", event)
    thread = threading.Thread(target=_deliver_safely, args=(settings, event, payload),
                              name=f"notify-{event}", daemon=False)
    thread.start()


def _deliver_safely(settings: NotifySettings, event: str, payload: dict[str, Any]) -> None:
    try:
        deliver(settings, event, payload)
    except Exception:  # a notification must never take anything down; the log keeps why
        log.exception("notification %s failed", event)

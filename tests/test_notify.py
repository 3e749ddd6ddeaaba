"""Notifications to a real local webhook and a real command."""

from __future__ import annotations

import json
import logging
import socket
import sys
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from helpers import wait_for

from finetuned.config import NotifySettings
from finetuned.notify import deliver, notify


class Receiver:
    """A webhook on 127.0.0.1 that keeps every POST; `delay` makes it slow to answer."""

    def __init__(self, delay: float = 0.0) -> None:
        self.posts: list[tuple[dict[str, str], dict]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay)
                receiver.posts.append((dict(self.headers), json.loads(body)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def capture_command(tmp_path: Path) -> tuple[str, Path]:
    """A real command that writes its stdin (and $FINETUNED_EVENT) to files."""
    script = tmp_path / "capture.py"
    script.write_text("import os, sys\n"
                      "data = sys.stdin.buffer.read()\n"
                      "open(sys.argv[1] + '.event', 'w').write(os.environ['FINETUNED_EVENT'])\n"
                      "open(sys.argv[1], 'wb').write(data)\n")
    out = tmp_path / "got dir" / "event.json"
    out.parent.mkdir()
    return f"{sys.executable} {script} '{out}'", out


def test_webhook_and_command_receive_the_event(receiver, tmp_path):
    command, out = capture_command(tmp_path)
    settings = NotifySettings(webhook=receiver.url, command=command, timeout_seconds=10)
    started = time.time()
    notify(settings, "job_completed", {"job_id": "20251116_014530", "file": "puzzles.jsonl", "steps": 120})
    assert time.time() - started < 0.5, "notify returns at once"
    wait_for(lambda: receiver.posts and out.exists() and out.stat().st_size, 20, "both notifications")
    headers, body = receiver.posts[0]
    assert headers["Content-Type"] == "application/json"
    assert body["event"] == "job_completed" and body["job_id"] == "20251116_014530" and body["steps"] == 120
    datetime.fromisoformat(body["time"])
    assert json.loads(out.read_text()) == body
    assert Path(str(out) + ".event").read_text() == "job_completed"


def test_a_slow_receiver_never_holds_up_the_caller(tmp_path):
    slow = Receiver(delay=1.5)
    try:
        started = time.time()
        notify(NotifySettings(webhook=slow.url, timeout_seconds=5), "paused_for_disk", {"free_gb": 0.4})
        assert time.time() - started < 0.5
        wait_for(lambda: slow.posts, 20, "the slow webhook")
        assert slow.posts[0][1]["event"] == "paused_for_disk"
        failures = deliver(NotifySettings(webhook=slow.url, timeout_seconds=0.3), "daemon_stopped", {})
        assert len(failures) == 1 and "timed out" in failures[0]
    finally:
        slow.close()


def test_failures_are_logged_and_never_raised(tmp_path, caplog):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = NotifySettings(webhook=f"http://127.0.0.1:{port}/", command=f"{sys.executable} -c 'exit(3)'",
                              timeout_seconds=2)
    with caplog.at_level(logging.WARNING, logger="finetuned.notify"):
        failures = deliver(settings, "job_failed", {"job_id": "x"})
        missing = deliver(NotifySettings(command="/no/such/program"), "job_failed", {})
    assert len(failures) == 2 and "exited with 3" in failures[1]
    assert len(missing) == 1 and "No such file" in missing[0]
    assert sum("not delivered" in r.message for r in caplog.records) == 3
    notify(settings, "job_failed", {})  # in the background: nothing to catch here either

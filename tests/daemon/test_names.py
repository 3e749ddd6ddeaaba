"""Long file names through a real daemon: counted in bytes, shortened where they must be, never fatal."""

from __future__ import annotations

import json
import urllib.request

import pytest
from helpers import DaemonProcess, chat_lines, jobs_by_file, make_workspace, read_json, tiny_config, wait_for, where_is

from finetuned.config import Config

INBOX_NAME = "a" * 234 + ".jsonl"  # 240 bytes: `JOB_ID__` in front of it made "File name too long"
UPLOAD_NAME = "漢" * 78 + ".jsonl"  # 240 bytes in 84 characters


def _config() -> Config:
    config = tiny_config()
    config.monitor.port = 0
    return config


pytestmark = pytest.mark.daemon  # a real `finetuned run`


def test_long_names_train_and_the_daemon_restarts(tmp_path, tiny_model_dir):
    ws = make_workspace(tmp_path / "ws", _config())
    (ws.inbox_normal / INBOX_NAME).write_text("".join(json.dumps(r) + "\n" for r in chat_lines(6)))
    daemon = DaemonProcess(ws, tmp_path / "daemon-0.out", monitor=True)
    try:
        url = daemon.monitor_url()
        body = "".join(json.dumps(r) + "\n" for r in chat_lines(6, "yo")).encode()
        request = urllib.request.Request(f"{url}api/upload?name={urllib.request.quote(UPLOAD_NAME)}", data=body,
                                         method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 201
        wait_for(lambda: all((jobs_by_file(ws).get(n) or {}).get("status") == "completed"
                             for n in (INBOX_NAME, UPLOAD_NAME)), 240, "both files to train", daemon=daemon)
        failed = ws.inbox_normal / ("b" * 240 + ".jsonl")
        failed.write_text("not json\n")  # fails: its NAME.error.json must fit beside it
        wait_for(lambda: (jobs_by_file(ws).get(failed.name) or {}).get("status") == "failed", 120,
                 "the bad long file to fail", daemon=daemon)
    finally:
        assert daemon.stop() == 0, daemon.output()
    jobs = jobs_by_file(ws)
    for name in (INBOX_NAME, UPLOAD_NAME, failed.name):
        assert len(where_is(ws, jobs[name])) == 1, (name, where_is(ws, jobs[name]))
    report = ws.root / (jobs[failed.name]["path"] + ".error.json")
    assert read_json(report)["file"] == failed.name, "the report names the file as dropped"
    assert read_json(ws.adapter_dir(jobs[UPLOAD_NAME]["id"]) / "job.json")["file"] == UPLOAD_NAME

    again = DaemonProcess(ws, tmp_path / "daemon-1.out")
    try:
        wait_for(lambda: (read_json(ws.status_json) or {}).get("pid") == again.proc.pid, 60,
                 "the daemon to start again", daemon=again)
    finally:
        assert again.stop() == 0, again.output()

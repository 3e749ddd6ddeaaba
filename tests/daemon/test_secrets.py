"""The monitor's token and the notification endpoints live in config.json alone, which only its owner reads."""

from __future__ import annotations

import json
import stat
import sys
import urllib.request

import pytest
from helpers import DaemonProcess, chat_lines, drop, jobs_by_file, make_workspace, read_json, tiny_config, wait_for

from finetuned.lifecycle.export import export

TOKEN = "token-that-must-not-leak-0123"
WEBHOOK = "http://127.0.0.1:9/hook-that-must-not-leak"
COMMAND = f"{sys.executable} -c pass  # command-that-must-not-leak"


def leaks(root, secrets: tuple[str, ...], skip=()) -> list[str]:
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path not in skip:
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {s[:12]}..." for s in secrets if s.encode() in data]
    return found


pytestmark = pytest.mark.daemon  # a real `finetuned run`


def test_secrets_stay_in_config_json(tmp_path, tiny_model_dir):
    config = tiny_config()
    config.monitor.port, config.monitor.token = 0, TOKEN
    config.notify.webhook, config.notify.command, config.notify.timeout_seconds = WEBHOOK, COMMAND, 2
    ws = make_workspace(tmp_path / "ws", config)
    assert stat.S_IMODE(ws.config_path.stat().st_mode) == 0o600, "config.json is its owner's alone"
    daemon = DaemonProcess(ws, tmp_path / "daemon.out", monitor=True)
    try:
        url = daemon.monitor_url()
        drop(ws, "a.jsonl", chat_lines(6))
        wait_for(lambda: (jobs_by_file(ws).get("a.jsonl") or {}).get("status") == "completed", 240,
                 "the job to train", daemon=daemon)
        job_id = jobs_by_file(ws)["a.jsonl"]["id"]
        request = urllib.request.Request(f"{url}api/jobs/{job_id}", headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            body = response.read().decode()
        assert job_id in body and TOKEN not in body and "must-not-leak" not in body
    finally:
        daemon.stop()
    secrets = (TOKEN, "hook-that-must-not-leak", "command-that-must-not-leak")
    assert not leaks(ws.root, secrets, skip={ws.config_path}), leaks(ws.root, secrets, skip={ws.config_path})
    record = read_json(ws.adapter_dir(job_id) / "job.json")
    assert record["config"]["monitor"]["token"] == "***"
    assert record["config"]["notify"]["webhook"] == "***" and record["config"]["notify"]["command"] == "***"
    assert record["config"]["training"]["batch_size"] == 2, "the rest of the config is all there"
    out = export(ws, job_id, tmp_path / "export")
    assert not leaks(out, secrets)
    # An adapter published by an older version holds the token in its job.json: an export must not carry it.
    old = ws.adapter_dir(job_id) / "job.json"
    old.write_text(json.dumps({**record, "config": {**record["config"], "monitor": {"token": TOKEN}}}))
    out = export(ws, job_id, tmp_path / "export-old")
    assert not leaks(out, secrets), leaks(out, secrets)

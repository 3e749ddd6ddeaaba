"""The commands of SPEC section 5 as a user types them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import chat_lines, jobs_by_file, last_step, read_json, wait_for, write_jsonl

COMMANDS = ["init", "run", "status", "queue", "add", "check", "pause", "resume", "stop", "skip", "cancel", "front"]


def finetuned(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True, timeout=120)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_help_explains_every_command():
    top = finetuned("--help").stdout
    for command in COMMANDS:
        assert command in top
    for command in ("init", "run", "status", "queue", "add", "check", "cancel"):
        assert "examples:" in finetuned(command, "--help").stdout, command


def test_init_creates_the_layout_and_is_safe_to_repeat(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    for folder in ("inbox/priority", "inbox/normal", "control", "data/queued", "data/completed", "data/failed",
                   "data/skipped", "models/base", "models/adapters", "models/checkpoints", "logs", "status"):
        assert (root / folder).is_dir(), folder
    config = json.loads((root / "config.json").read_text())
    config["training"]["epochs"] = 3
    (root / "config.json").write_text(json.dumps(config))
    finetuned("init", str(root), "--sample")
    assert json.loads((root / "config.json").read_text())["training"]["epochs"] == 3, "init never overwrites"
    assert (root / "inbox/normal/chat_sample.jsonl").exists()


def test_add_puts_files_in_the_right_inbox(tmp_path):
    root = tmp_path / "ws"
    finetuned("init", str(root))
    data = write_jsonl(tmp_path / "d.jsonl", chat_lines(3))
    finetuned("add", str(data), "--root", str(root))
    finetuned("add", str(data), "--priority", "--root", str(root))
    finetuned("add", str(data), "--root", str(root))
    assert (root / "inbox/priority/d.jsonl").read_bytes() == data.read_bytes()
    assert sorted(p.name for p in (root / "inbox/normal").iterdir()) == ["d.copy.jsonl", "d.jsonl"]
    missing = finetuned("add", str(tmp_path / "nope.jsonl"), "--root", str(root), check=False)
    assert missing.returncode == 1 and "no such file" in missing.stderr


def test_commands_outside_a_workspace_say_so(tmp_path):
    result = finetuned("queue", "--root", str(tmp_path), check=False)
    assert result.returncode == 1 and "not a finetuned workspace" in result.stderr


@pytest.mark.usefixtures("tiny_model_dir")
def test_status_and_queue_while_training(ws, start_daemon, gate):
    daemon = start_daemon(ws)
    gate.hold(2)
    (ws.inbox_normal / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_lines(40)))
    (ws.inbox_normal / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_lines(4, "yo")))
    wait_for(lambda: last_step(ws, "a.jsonl") >= 2 and "b.jsonl" in jobs_by_file(ws), 120, "training",
             daemon=daemon)
    status = finetuned("status", "--root", str(ws.root)).stdout
    assert "daemon: running" in status and "a.jsonl" in status and "step" in status
    as_json = json.loads(finetuned("queue", "--json", "--root", str(ws.root)).stdout)
    assert as_json["current"]["id"] == jobs_by_file(ws)["a.jsonl"]["id"]
    assert [e["file"] for e in as_json["queue"]] == ["a.jsonl", "b.jsonl"]
    table = finetuned("queue", "--root", str(ws.root)).stdout
    assert "training" in table and "queued" in table
    record = finetuned("status", jobs_by_file(ws)["a.jsonl"]["id"], "--json", "--root", str(ws.root)).stdout
    assert json.loads(record)["file"] == "a.jsonl"
    finetuned("pause", "--root", str(ws.root))
    wait_for(lambda: ((read_json(ws.queue_json) or {}).get("current") or {}).get("status") == "paused", 30, "pause",
             daemon=daemon)
    finetuned("resume", "--root", str(ws.root))
    assert not ws.pause_file.exists()
    daemon.stop()
    assert "not running" in finetuned("status", "--root", str(ws.root)).stdout

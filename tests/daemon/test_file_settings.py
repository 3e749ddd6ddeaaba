"""A file's own settings: a sidecar or `add --set`, checked at ingestion, recorded, shown, trained with."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import chat_lines, drop, held_at, jobs_by_file, read_json, status_of, wait_for, write_jsonl


def cli(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "finetuned", *args], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    return result


def test_a_sidecar_overrides_the_config_for_its_file_alone(ws, tmp_path, start_daemon, gate):
    daemon = start_daemon(ws)
    gate.hold(1)
    drop(ws, "plain.jsonl", chat_lines(8))
    held_at(ws, "plain.jsonl", 1, daemon)
    (ws.inbox_normal / "twice.jsonl.config.json").write_text(json.dumps({"training": {"epochs": 2}}))
    drop(ws, "twice.jsonl", chat_lines(8, "yo"))
    data = write_jsonl(tmp_path / "added.jsonl", chat_lines(8, "ho"))
    cli("add", str(data), "--set", "training.max_steps=1", "--root", str(ws.root))
    (ws.inbox_normal / "bad.jsonl.config.json").write_text(json.dumps({"training": {"epoch": 2}}))
    drop(ws, "bad.jsonl", chat_lines(8, "no"))

    wait_for(lambda: status_of(ws, "bad.jsonl") == "failed" and status_of(ws, "added.jsonl") == "queued",
             60, "the files to be taken", daemon=daemon)
    report = read_json(ws.failed / "bad.jsonl.error.json")
    assert "unknown key 'training.epoch'" in report["error"], report
    assert json.loads((ws.failed / "bad.jsonl.config.json").read_text()) == {"training": {"epoch": 2}}, "kept"
    wait_for(lambda: len((read_json(ws.queue_json) or {"queue": []})["queue"]) == 3, 30, "queue.json", daemon=daemon)
    entries = {e["file"]: e for e in read_json(ws.queue_json)["queue"]}
    assert entries["twice.jsonl"]["settings"] == {"training.epochs": 2}
    assert entries["added.jsonl"]["settings"] == {"training.max_steps": 1}
    assert "settings" not in entries["plain.jsonl"]
    table = cli("queue", "--root", str(ws.root)).stdout
    assert "training.epochs=2" in table and "training.max_steps=1" in table
    assert not list(ws.inbox_normal.iterdir()), "sidecars leave the inbox with their files"

    gate.release()
    wait_for(lambda: status_of(ws, "added.jsonl") == "completed", 240, "every job", daemon=daemon)
    jobs = jobs_by_file(ws)
    plain, twice, added = (read_json(ws.adapter_record(jobs[f]["id"])) for f in
                           ("plain.jsonl", "twice.jsonl", "added.jsonl"))
    assert twice["overrides"] == {"training": {"epochs": 2}} and jobs["twice.jsonl"]["overrides"] == twice["overrides"]
    assert twice["config"]["training"]["epochs"] == 2 and plain["config"]["training"]["epochs"] == 1
    assert twice["steps"] == 2 * plain["steps"] and twice["examples_trained"] == 16
    assert added["steps"] == 1 < plain["steps"]
    assert read_json(ws.config_path)["training"]["epochs"] == 1, "the workspace's config is untouched"

"""A full disk pauses the line with a clear reason instead of corrupting anything."""

from __future__ import annotations

import json
import time

from helpers import chat_lines, drop, last_step, make_workspace, read_json, status_of, tiny_config, wait_for

from finetuned import checkpoints
from finetuned.config import save_config


def test_low_disk_space_pauses_before_a_checkpoint_and_continues_when_space_returns(
        tmp_path, tiny_model_dir, start_daemon):
    config = tiny_config(checkpoint_every_steps=3)
    config.lifecycle.min_free_gb = 1e9  # more than any disk has: as good as full
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "a.jsonl", chat_lines(60))
    status = wait_for(lambda: (s := read_json(ws.status_json)) and s["state"] == "paused" and s, 120,
                      "the line to pause for disk space", daemon=daemon)
    assert "disk space" in status["reason"] and "min_free_gb" in status["reason"]
    held = last_step(ws, "a.jsonl")
    time.sleep(1.5)
    assert held == last_step(ws, "a.jsonl") < 4, "training holds at the checkpoint it cannot write (step 3)"
    job_id = json.loads(next(ws.jobs.glob("*.json")).read_text())["id"]
    assert checkpoints.latest(ws.job_checkpoints(job_id)) is None, "no half-written checkpoint"
    assert not list(ws.job_checkpoints(job_id).glob("*.tmp")), "no half-written checkpoint folder either"
    assert "waiting for disk space" in ws.daemon_log().read_text()

    config.lifecycle.min_free_gb = 0  # space "returns"
    save_config(ws.config_path, config)
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 240, "training to go on", daemon=daemon)
    assert read_json(ws.adapter_dir(job_id) / "job.json")["steps"] > 3

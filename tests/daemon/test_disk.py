"""A full disk pauses the line with a clear reason instead of corrupting anything or ending the daemon."""

from __future__ import annotations

import json
import time

from helpers import (
    chat_lines,
    drop,
    fill,
    held_at,
    jobs_by_file,
    last_step,
    make_workspace,
    read_json,
    status_of,
    tiny_config,
    wait_for,
)

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


def test_a_full_disk_pauses_the_line_and_it_resumes_when_space_returns(small_disk, tiny_model_dir, start_daemon,
                                                                       gate):
    """ENOSPC on heartbeats, records, metrics and checkpoints: the daemon holds with a reason, never dies,
    leaves nothing half-written, and finishes the job once space is freed."""
    config = tiny_config(checkpoint_every_steps=4)
    config.lifecycle.min_free_gb = 0  # only the real ENOSPC stops anything
    ws = make_workspace(small_disk / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(6)
    drop(ws, "a.jsonl", chat_lines(60))
    held_at(ws, "a.jsonl", 6, daemon)
    filler = small_disk / "filler"
    fill(filler)
    gate.release()
    status = wait_for(lambda: (s := read_json(ws.status_json)) and "disk is full" in s["reason"] and s, 60,
                      "the daemon to say it holds for the disk", daemon=daemon)
    assert status["state"] == "paused" and status["phase"] == "waiting for disk space"
    time.sleep(3)
    assert daemon.proc.poll() is None, "a full disk never ends the daemon"
    assert time.time() - read_json(ws.status_json)["heartbeat_unix"] < 3, "its heartbeat goes on (the reserve)"
    filler.unlink()
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 180, "the job to finish once space is back",
             daemon=daemon)
    assert daemon.stop() == 0
    job = jobs_by_file(ws)["a.jsonl"]
    assert read_json(ws.adapter_dir(job["id"]) / "job.json")["steps"] == job["total_steps"]
    assert any("disk" in (run["reason"] or "") for run in job["runs"]), job["runs"]
    leftovers = [p for p in ws.root.rglob("*") if p.name.endswith((".tmp", ".corrupt"))]
    assert not leftovers, leftovers
    for path in ws.jobs.glob("*.json"):
        json.loads(path.read_text())
    for line in ws.metrics_file(job["id"]).read_text().splitlines():
        json.loads(line)  # no half-written line
    assert read_json(ws.status_json)["state"] == "stopped"


def test_a_full_disk_at_shutdown_still_stops_cleanly(small_disk, tiny_model_dir, start_daemon, gate):
    config = tiny_config()
    config.lifecycle.min_free_gb = 0
    ws = make_workspace(small_disk / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(3)
    drop(ws, "a.jsonl", chat_lines(40))
    held_at(ws, "a.jsonl", 3, daemon)
    fill(small_disk / "filler")
    assert daemon.stop() == 0, daemon.output()
    assert "Traceback" not in daemon.output()
    (small_disk / "filler").unlink()
    daemon = start_daemon(ws)
    gate.release()
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 180, "the job after a restart", daemon=daemon)


def test_queue_json_made_a_folder_is_one_clear_error_and_the_daemon_goes_on(ws, start_daemon):
    daemon = start_daemon(ws)
    wait_for(lambda: read_json(ws.status_json), 60, "the daemon to start", daemon=daemon)
    for _ in range(100):  # the daemon rewrites the file every second: make the folder between two writes
        ws.queue_json.unlink(missing_ok=True)
        try:
            ws.queue_json.mkdir()
            break
        except FileExistsError:
            continue
    assert ws.queue_json.is_dir()
    drop(ws, "a.jsonl", chat_lines(6))
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 180, "a job to train anyway", daemon=daemon)
    log = ws.daemon_log().read_text()
    errors = [line for line in log.splitlines() if "queue.json" in line and " ERROR " in line]
    assert len(errors) == 1 and "Is a directory" in errors[0], errors
    assert "Traceback" not in log and "Traceback" not in daemon.output()
    assert not list(ws.control.glob(".queue.json.*")), "no temporary left behind"
    ws.queue_json.rmdir()
    wait_for(lambda: read_json(ws.queue_json) is not None, 10, "queue.json written again", daemon=daemon)

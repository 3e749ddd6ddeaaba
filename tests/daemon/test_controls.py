"""Every control of SPEC section 2 against a real daemon on builtin:tiny."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from helpers import (
    chat_lines,
    drop,
    held_at,
    jobs_by_file,
    last_step,
    logged_losses,
    make_workspace,
    pid_alive,
    queue_status,
    read_json,
    status_of,
    tiny_config,
    wait_for,
)

from finetuned import checkpoints
from finetuned.config import save_config


# Each control must land while its job trains: the step gate holds the worker at a known step
# boundary (still obeying orders there), so no test depends on how fast this machine trains.
@pytest.fixture
def long_ws(tmp_path, tiny_model_dir):
    return make_workspace(tmp_path / "ws", tiny_config(mode="independent", checkpoint_every_steps=1000))


def test_pause_checkpoints_holds_priority_work_and_resume_continues(long_ws, start_daemon, gate):
    ws = long_ws
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "long.jsonl", chat_lines(40))
    held_at(ws, "long.jsonl", 2, daemon)
    (ws.control / ".pause").touch()
    wait_for(lambda: queue_status(ws, "long.jsonl") == "paused", 30, "paused in queue.json", daemon=daemon)
    job = jobs_by_file(ws)["long.jsonl"]
    saved = checkpoints.latest(ws.job_checkpoints(job["id"]))
    assert saved is not None and saved[0].step == job["step"] == 2, "a pause writes a checkpoint at its step"
    gate.release()
    drop(ws, "urgent.jsonl", chat_lines(4), priority=True)
    wait_for(lambda: status_of(ws, "urgent.jsonl") == "queued", 30, "urgent to be queued", daemon=daemon)
    time.sleep(1)
    assert last_step(ws, "long.jsonl") == job["step"], "nothing trains while paused"
    assert status_of(ws, "urgent.jsonl") == "queued", "priority work queues during a pause"
    (ws.control / ".pause").unlink()
    wait_for(lambda: status_of(ws, "long.jsonl") == "completed", 240, "the paused job to finish", daemon=daemon)
    jobs = jobs_by_file(ws)
    assert jobs["urgent.jsonl"]["status"] == "completed"
    assert jobs["urgent.jsonl"]["runs"][0]["ended"] <= jobs["long.jsonl"]["runs"][-1]["started"], \
        "after the pause, priority work goes first"
    assert [e["status"] for e in jobs["long.jsonl"]["history"]].count("paused") == 1
    log = ws.daemon_log().read_text()
    for line in ("pause requested at step 2", "paused at step 2", "resuming from checkpoint-2 (step 2)"):
        assert log.count(line) == 1, (line, log)


def test_stop_requeues_behind_its_class_and_resumes_later(long_ws, start_daemon, gate):
    ws = long_ws
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "a.jsonl", chat_lines(40))
    drop(ws, "b.jsonl", chat_lines(6, "yo"))
    held_at(ws, "a.jsonl", 2, daemon)
    (ws.control / ".stop").touch()
    wait_for(lambda: status_of(ws, "b.jsonl") in ("training", "completed"), 60, "b to start", daemon=daemon)
    assert status_of(ws, "a.jsonl") == "queued"
    wait_for(lambda: not (ws.control / ".stop").exists(), 10, ".stop to be consumed")
    gate.release()
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 240, "a to finish", daemon=daemon)
    a, b = jobs_by_file(ws)["a.jsonl"], jobs_by_file(ws)["b.jsonl"]
    assert a["runs"][0]["reason"].startswith("stop at step")
    assert a["runs"][1]["from_step"] == a["runs"][0]["to_step"] > 0
    assert b["runs"][0]["ended"] <= a["runs"][1]["started"]
    assert read_json(ws.adapter_dir(a["id"]) / "job.json")["steps"] == a["total_steps"]


def test_skip_abandons_the_job_keeps_its_checkpoint_and_starts_the_next(long_ws, start_daemon, gate):
    ws = long_ws
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "a.jsonl", chat_lines(40))
    drop(ws, "b.jsonl", chat_lines(6, "yo"))
    held_at(ws, "a.jsonl", 2, daemon)
    (ws.control / ".skip").touch()
    wait_for(lambda: status_of(ws, "a.jsonl") == "skipped", 60, "a skipped", daemon=daemon)
    assert jobs_by_file(ws)["a.jsonl"]["step"] == 2
    gate.release()
    a = jobs_by_file(ws)["a.jsonl"]
    assert (ws.skipped / "a.jsonl").exists()
    assert checkpoints.latest(ws.job_checkpoints(a["id"])) is not None, "a recovery checkpoint is kept"
    assert not ws.adapter_dir(a["id"]).exists(), "no adapter for a skipped job"
    wait_for(lambda: not (ws.control / ".skip").exists(), 10, ".skip consumed")
    wait_for(lambda: status_of(ws, "b.jsonl") == "completed", 120, "b", daemon=daemon)


def test_priority_preempts_normal_work_which_then_resumes(long_ws, start_daemon, gate):
    ws = long_ws
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "normal.jsonl", chat_lines(40))
    drop(ws, "normal2.jsonl", chat_lines(6))
    held_at(ws, "normal.jsonl", 2, daemon)
    drop(ws, "p1.jsonl", chat_lines(40, "yo"), priority=True)
    wait_for(lambda: status_of(ws, "p1.jsonl") == "training", 60, "p1 to preempt", daemon=daemon)
    held_at(ws, "p1.jsonl", 2, daemon)
    drop(ws, "p2.jsonl", chat_lines(4, "yo"), priority=True)
    wait_for(lambda: status_of(ws, "p2.jsonl") == "queued", 30, "p2 to be queued", daemon=daemon)
    # p2 arrives while p1 still trains (held at the gate): priority jobs never preempt each other.
    assert status_of(ws, "p1.jsonl") == "training"
    assert status_of(ws, "normal.jsonl") == "queued"
    gate.release()
    wait_for(lambda: status_of(ws, "normal2.jsonl") == "completed", 300, "everything", daemon=daemon)
    jobs = jobs_by_file(ws)
    normal, p1, p2 = jobs["normal.jsonl"], jobs["p1.jsonl"], jobs["p2.jsonl"]
    assert len(p1["runs"]) == 1, "priority jobs never preempt each other"
    assert normal["runs"][0]["reason"].startswith("preempt")
    assert p1["runs"][0]["ended"] <= p2["runs"][0]["started"] <= normal["runs"][1]["started"]
    assert normal["runs"][1]["started"] <= jobs["normal2.jsonl"]["runs"][0]["started"], \
        "the preempted job goes back to the head of the normal queue"
    assert normal["runs"][1]["from_step"] == normal["runs"][0]["to_step"]


def test_stop_and_skip_with_nothing_training_are_removed(ws, start_daemon):
    daemon = start_daemon(ws)
    wait_for(lambda: read_json(ws.status_json), 30, "the daemon", daemon=daemon)
    (ws.control / ".stop").touch()
    (ws.control / ".skip").touch()
    wait_for(lambda: not (ws.control / ".stop").exists() and not (ws.control / ".skip").exists(), 10,
             "the stray controls to be removed", daemon=daemon)
    drop(ws, "a.jsonl", chat_lines(4))
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 120, "a later job to train normally", daemon=daemon)
    assert "nothing is training" in ws.daemon_log().read_text()


def test_cancel_a_queued_job_through_the_running_daemon(long_ws, start_daemon):
    ws = long_ws
    daemon = start_daemon(ws)
    (ws.control / ".pause").touch()
    drop(ws, "a.jsonl", chat_lines(4))
    wait_for(lambda: status_of(ws, "a.jsonl") == "queued", 30, "a queued", daemon=daemon)
    job_id = jobs_by_file(ws)["a.jsonl"]["id"]
    run = subprocess.run([sys.executable, "-m", "finetuned", "cancel", job_id, "--root", str(ws.root)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "cancelled" in run.stdout
    assert status_of(ws, "a.jsonl") == "skipped" and (ws.skipped / "a.jsonl").exists()
    again = subprocess.run([sys.executable, "-m", "finetuned", "cancel", job_id, "--root", str(ws.root)],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not queued" in again.stderr


def test_retry_puts_a_failed_file_back_through_the_running_daemon(ws, start_daemon):
    daemon = start_daemon(ws)
    drop(ws, "a.jsonl", chat_lines(4))
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 120, "a to train", daemon=daemon)
    drop(ws, "b.jsonl", chat_lines(4))  # the same bytes again: refused as a duplicate
    wait_for(lambda: status_of(ws, "b.jsonl") == "failed", 60, "b to fail", daemon=daemon)
    assert (ws.failed / "b.jsonl.error.json").exists()
    cli = [sys.executable, "-m", "finetuned"]
    root = ["--root", str(ws.root)]
    edit = subprocess.run([*cli, "config", "set", "inbox.allow_duplicates", "true", *root], capture_output=True,
                          text=True, timeout=60)
    assert edit.returncode == 0 and "inbox.allow_duplicates: false -> true" in edit.stdout, edit.stderr
    job_id = jobs_by_file(ws)["b.jsonl"]["id"]
    run = subprocess.run([*cli, "retry", job_id, *root], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "queued again" in run.stdout, run.stderr
    wait_for(lambda: status_of(ws, "b.jsonl") == "completed", 120, "b to train after the retry", daemon=daemon)
    assert not (ws.failed / "b.jsonl.error.json").exists() and (ws.completed / "b.jsonl").exists()
    assert "retried" in ws.daemon_log().read_text()
    again = subprocess.run([*cli, "retry", job_id, *root], capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "not failed" in again.stderr


def test_a_long_pause_releases_the_model_and_resume_reloads(tmp_path, tiny_model_dir, start_daemon, gate):
    config = tiny_config(mode="independent")
    config.control.pause_release_after_seconds = 0.5
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(2)
    drop(ws, "a.jsonl", chat_lines(40))
    held_at(ws, "a.jsonl", 2, daemon)
    worker = daemon.worker_pid()
    (ws.control / ".pause").touch()
    wait_for(lambda: not pid_alive(worker), 30, "the worker to exit and free its memory", daemon=daemon)
    assert last_step(ws, "a.jsonl") == 2
    gate.release()
    (ws.control / ".pause").unlink()
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 240, "a to finish", daemon=daemon)


def test_interrupted_run_logs_the_same_losses_as_an_uninterrupted_one(long_ws, start_daemon, gate):
    """Pause, stop, preemption and SIGKILL mid-job: every step's loss matches a run left alone (1e-6)."""
    ws = long_ws
    config = ws.load_config()
    config.inbox.allow_duplicates = True  # the same data twice: once left alone, once interrupted
    save_config(ws.config_path, config)
    daemon = start_daemon(ws)
    records = chat_lines(200)
    drop(ws, "reference.jsonl", records)
    wait_for(lambda: status_of(ws, "reference.jsonl") == "completed", 300, "the reference run", daemon=daemon)
    reference = logged_losses(ws, jobs_by_file(ws)["reference.jsonl"]["id"])
    total = len(reference)
    assert total > 31, "the last interruption (step 31) must land mid-job"

    gate.hold(5)
    drop(ws, "again.jsonl", records)
    held_at(ws, "again.jsonl", 5, daemon)
    (ws.control / ".pause").touch()
    wait_for(lambda: queue_status(ws, "again.jsonl") == "paused", 30, "paused", daemon=daemon)
    gate.hold(12)
    (ws.control / ".pause").unlink()
    held_at(ws, "again.jsonl", 12, daemon)
    (ws.control / ".stop").touch()
    wait_for(lambda: not (ws.control / ".stop").exists(), 30, "the stop", daemon=daemon)
    gate.hold(20)
    held_at(ws, "again.jsonl", 20, daemon)
    drop(ws, "urgent.jsonl", chat_lines(4, "yo"), priority=True)  # 2 steps: under the gate
    wait_for(lambda: status_of(ws, "urgent.jsonl") == "completed", 120, "the priority job", daemon=daemon)
    gate.hold(31)
    held_at(ws, "again.jsonl", 31, daemon)
    daemon.kill()
    gate.release()
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "again.jsonl") == "completed", 300, "the interrupted run", daemon=daemon)
    job = jobs_by_file(ws)["again.jsonl"]
    reasons = [run["reason"] for run in job["runs"]]
    assert any(r.startswith("paused") for r in reasons) and any(r.startswith("stop") for r in reasons)
    assert any(r.startswith("preempt") for r in reasons) and "daemon stopped" in reasons, reasons
    again = logged_losses(ws, job["id"])
    assert sorted(again) == sorted(reference)
    for step in reference:
        assert again[step] == pytest.approx(reference[step], abs=1e-6), f"step {step}"

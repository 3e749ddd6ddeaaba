"""The job in the worker, as the daemon's session sees it."""

from __future__ import annotations

from helpers import chat_lines, drop, jobs_by_file, make_workspace, status_of, tiny_config, wait_for

from finetuned.models import memory


def test_a_job_that_raises_in_the_worker_is_retried_then_failed_and_the_daemon_lives(tmp_path, tiny_model_dir,
                                                                                   start_daemon, monkeypatch):
    config = tiny_config()
    # The worker raises when it builds the model (settings the model checker would refuse hold the queue instead).
    monkeypatch.setenv(memory.INJECT_ENV, "no_such_module")
    config.control.max_retries = 1
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "job.jsonl", chat_lines(6))
    wait_for(lambda: status_of(ws, "job.jsonl") == "failed", 120, "the job to fail", daemon=daemon)
    runs = jobs_by_file(ws)["job.jsonl"]["runs"]
    assert len(runs) == 2, "one retry, as control.max_retries says"
    assert all("no_such_module" in run["reason"] for run in runs), runs
    assert daemon.proc.poll() is None, "the daemon goes on"

"""The daemon as a user runs it: a real `finetuned run` process training builtin:tiny."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from helpers import (
    chat_lines,
    check_queue_shape,
    drop,
    held_at,
    job_records,
    jobs_by_file,
    make_workspace,
    pid_alive,
    read_json,
    status_of,
    tiny_config,
    wait_for,
    where_is,
)

from finetuned import checkpoints


def test_two_files_train_in_order_and_publish_adapters(tmp_path, tiny_model_dir, start_daemon):
    """Two drops train one after the other; each publishes a loadable adapter and the loss falls."""
    ws = make_workspace(tmp_path / "ws", tiny_config(epochs=4, learning_rate=3e-2))
    daemon = start_daemon(ws)
    drop(ws, "first.jsonl", chat_lines(24, "hi"))
    drop(ws, "second.jsonl", chat_lines(24, "yo"))
    shapes_seen = set()

    def both_done() -> bool:
        doc = read_json(ws.queue_json)
        if doc:
            check_queue_shape(doc)
            shapes_seen.update(e["status"] for e in doc["queue"])
        return status_of(ws, "first.jsonl") == "completed" and status_of(ws, "second.jsonl") == "completed"

    wait_for(both_done, 180, "both jobs to complete", interval=0.05, daemon=daemon)
    assert "training" in shapes_seen and "queued" in shapes_seen
    jobs = jobs_by_file(ws)
    first, second = jobs["first.jsonl"], jobs["second.jsonl"]
    assert first["runs"][0]["ended"] <= second["runs"][0]["started"], "jobs must train one after the other"
    assert (ws.completed / "first.jsonl").exists() and (ws.completed / "second.jsonl").exists()
    assert not list(ws.queued.iterdir())
    wait_for(lambda: read_json(ws.queue_json) == {"queue": [], "current": None}, 5, "queue.json to empty")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    for job in (first, second):
        adapter = ws.adapter_dir(job["id"])
        record = read_json(adapter / "job.json")
        assert record["status"] == "completed"
        assert record["steps"] == record["total_steps"] >= 3
        assert record["examples_trained"] == 4 * 24  # four epochs
        assert record["tokens"] > 0 and len(record["sha256"]) == 64
        base = AutoModelForCausalLM.from_pretrained(record["base_path"])
        PeftModel.from_pretrained(base, adapter)
        losses = [json.loads(line)["loss"] for line in ws.metrics_file(job["id"]).read_text().splitlines()]
        assert losses[-1] < losses[0] - 2.0, f"loss should fall on a learnable task: {losses}"
    log = ws.daemon_log().read_text()
    assert f"step {record['steps']}/{record['steps']} loss" in log and "completed" in log
    output = daemon.output()  # the daemon's stderr, which its children share: no library progress bars
    assert "Loading weights" not in output and "it/s]" not in output, output


def test_half_copied_file_is_not_taken_until_complete(ws, start_daemon):
    """A file that is still growing under its final name waits until it stops growing."""
    daemon = start_daemon(ws)
    ws.create()
    lines = [json.dumps(r) + "\n" for r in chat_lines(20)]
    path = ws.inbox_normal / "slow.jsonl"
    with open(path, "w") as f:
        for line in lines[:10]:
            f.write(line)
        f.flush()
        for line in lines[10:]:  # keeps growing for ~2 s, each pause shorter than settle_seconds
            time.sleep(0.1)
            f.write(line)
            f.flush()
            assert path.exists(), "a growing file must stay in the inbox"
    job = wait_for(lambda: jobs_by_file(ws).get("slow.jsonl"), 30, "the file to be taken", daemon=daemon)
    wait_for(lambda: job_records(ws)[job["id"]]["examples"] is not None, 30, "validation", daemon=daemon)
    assert job_records(ws)[job["id"]]["examples"] == 20


def test_bad_file_goes_to_failed_and_daemon_goes_on(ws, start_daemon):
    daemon = start_daemon(ws)
    (ws.inbox_normal / "garbage.jsonl").write_bytes(b"\x00\xff\xfe not json at all\n" * 50)
    drop(ws, "good.jsonl", chat_lines(4))
    wait_for(lambda: status_of(ws, "good.jsonl") == "completed", 120, "the good file", daemon=daemon)
    assert status_of(ws, "garbage.jsonl") == "failed"
    assert (ws.failed / "garbage.jsonl").exists()
    report = read_json(ws.failed / "garbage.jsonl.error.json")
    assert report["error"], report
    assert daemon.proc.poll() is None


def test_second_daemon_on_the_same_workspace_is_refused(ws, start_daemon):
    daemon = start_daemon(ws)
    wait_for(lambda: read_json(ws.status_json), 30, "the first daemon to start", daemon=daemon)
    second = subprocess.run([sys.executable, "-m", "finetuned", "run", "--root", str(ws.root), "--no-monitor"],
                            capture_output=True, text=True, timeout=60)
    assert second.returncode != 0
    assert "another finetuned daemon" in second.stderr
    assert daemon.proc.poll() is None


def test_sigkill_mid_training_loses_nothing_and_resumes(ws, start_daemon, gate):
    """SIGKILL the daemon mid-job: the worker dies with it; a restart finishes the job from its checkpoint."""
    daemon = start_daemon(ws)
    gate.hold(10)
    drop(ws, "long.jsonl", chat_lines(60))
    drop(ws, "later.jsonl", chat_lines(6))
    held_at(ws, "long.jsonl", 10, daemon)
    long_dir = ws.job_checkpoints(jobs_by_file(ws)["long.jsonl"]["id"])
    wait_for(lambda: (checkpoints.latest(long_dir) or (None,))[0] and checkpoints.latest(long_dir)[0].step == 10,
             30, "the checkpoint at step 10 on disk", daemon=daemon)
    worker = daemon.worker_pid()
    assert worker and pid_alive(worker)
    daemon.kill()
    gate.release()
    wait_for(lambda: not pid_alive(worker), 10, "the worker to die with its daemon")
    for job in job_records(ws).values():
        assert len(where_is(ws, job)) == 1, (job["file"], where_is(ws, job))

    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "later.jsonl") == "completed", 180, "both jobs after restart", daemon=daemon)
    jobs = jobs_by_file(ws)
    long = jobs["long.jsonl"]
    assert long["status"] == "completed"
    assert long["runs"][1]["from_step"] >= 10, "the second run must resume from a checkpoint"
    record = read_json(ws.adapter_dir(long["id"]) / "job.json")
    assert record["steps"] == record["total_steps"] > long["runs"][1]["from_step"]
    assert record["examples_trained"] == 60
    for job in jobs.values():
        assert len(where_is(ws, job)) == 1, (job["file"], where_is(ws, job))


def test_sigterm_checkpoints_and_requeues(ws, start_daemon, gate):
    daemon = start_daemon(ws)
    gate.hold(3)
    drop(ws, "job.jsonl", chat_lines(40))
    held_at(ws, "job.jsonl", 3, daemon)
    assert daemon.stop() == 0
    job = jobs_by_file(ws)["job.jsonl"]
    assert job["status"] == "queued" and job["step"] == 3
    assert checkpoints.latest(ws.job_checkpoints(job["id"]))[0].step == 3, "the shutdown checkpoint"
    assert not pid_alive(int(daemon.proc.pid))
    status = read_json(ws.status_json)
    assert status["state"] == "stopped"
    assert ws.daemon_log().read_text().count("daemon stopped at step 3") == 1

    gate.release()  # Ctrl-C and restart: the job finishes, and reports the loss of its own first step
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "job.jsonl") == "completed", 180, "the job after the restart", daemon=daemon)
    first = json.loads(ws.metrics_file(job["id"]).read_text().splitlines()[0])
    assert first["step"] == 1
    record = read_json(ws.adapter_record(job["id"]))
    assert record["first_loss"] == first["loss"], "first_loss is step 1's, not the resume step's"
    # The completion line follows the record's move: wait for it rather than read the log at once.
    def completed_log() -> str | None:
        text = ws.daemon_log().read_text()
        return text if ": completed," in text else None

    log = wait_for(completed_log, 30, "the completion line in the log")
    assert log.count("resuming from checkpoint-3 (step 3)") == 1
    assert f"loss {first['loss']:.4f} ->" in log



def test_queued_files_are_tokenised_while_another_trains(ws, start_daemon, gate):
    """The next file is prepared during the current job; one that cannot train fails while it waits."""
    daemon = start_daemon(ws)
    gate.hold(1)
    drop(ws, "long.jsonl", chat_lines(40))
    held_at(ws, "long.jsonl", 1, daemon)
    drop(ws, "next.jsonl", chat_lines(6, "yo"))
    overlong = [{"text": "word " * 400}] * 3  # every example longer than max_seq_len: nothing would train
    drop(ws, "overlong.jsonl", overlong)
    wait_for(lambda: status_of(ws, "overlong.jsonl") == "failed", 120, "overlong to fail early", daemon=daemon)
    assert status_of(ws, "long.jsonl") == "training", "a bad queued file fails before its turn"
    next_id = jobs_by_file(ws)["next.jsonl"]["id"]
    wait_for(lambda: (ws.tokenized / next_id / "meta.json").exists(), 120, "next.jsonl tokenised ahead",
             daemon=daemon)
    assert status_of(ws, "next.jsonl") == "queued"
    gate.release()
    report = read_json(ws.failed / "overlong.jsonl.error.json")
    assert "max_seq_len" in json.dumps(report), report
    wait_for(lambda: status_of(ws, "next.jsonl") == "completed", 240, "next to train", daemon=daemon)


def test_a_worker_killed_mid_step_resumes_from_its_checkpoint_and_says_which(ws, start_daemon, gate):
    """After a crash the record and the log name the checkpoint the job resumes from, not the step it reached."""
    daemon = start_daemon(ws)
    gate.hold(7)  # checkpoints every 5 steps: the last one at 5
    drop(ws, "a.jsonl", chat_lines(60))
    held_at(ws, "a.jsonl", 7, daemon)
    job_id = jobs_by_file(ws)["a.jsonl"]["id"]
    wait_for(lambda: (checkpoints.latest(ws.job_checkpoints(job_id)) or (None,))[0] is not None, 30,
             "the checkpoint at step 5", daemon=daemon)
    os.kill(daemon.worker_pid(), signal.SIGKILL)
    wait_for(lambda: len(jobs_by_file(ws)["a.jsonl"]["runs"]) == 2 and jobs_by_file(ws)["a.jsonl"]["runs"][1]
             ["from_step"] == 5, 120, "the job to resume from step 5", daemon=daemon)
    gate.release()
    wait_for(lambda: status_of(ws, "a.jsonl") == "completed", 180, "the job to finish", daemon=daemon)
    job = jobs_by_file(ws)["a.jsonl"]
    assert job["runs"][0]["to_step"] == 7 and job["runs"][1]["from_step"] == 5
    assert any("from checkpoint-5 (step 5)" in event["reason"] for event in job["history"]), job["history"]
    log = ws.daemon_log().read_text()
    assert f"job {job_id}: worker died from SIGKILL" in log and "retrying from checkpoint-5 (step 5)" in log
    assert "resuming from checkpoint-5 (step 5)" in log


def test_a_job_that_loses_examples_says_so_in_its_record_the_log_and_job_json(ws, start_daemon):
    """30% of the file longer than max_seq_len: it trains, and says so wherever a user looks."""
    daemon = start_daemon(ws)
    overlong = [{"messages": [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]}]
    drop(ws, "lossy.jsonl", chat_lines(14) + overlong * 6)
    wait_for(lambda: status_of(ws, "lossy.jsonl") == "completed", 180, "the job", daemon=daemon)
    job = jobs_by_file(ws)["lossy.jsonl"]
    assert len(job["warnings"]) == 1 and "6 of 20 examples (30%)" in job["warnings"][0], job["warnings"]
    record = read_json(ws.adapter_record(job["id"]))
    assert record["warnings"] == job["warnings"]
    assert [n["kind"] for n in record["data"]["notes"]] == ["data_loss"]
    assert "WARNING" in ws.daemon_log().read_text().split("6 of 20 examples")[0].splitlines()[-1]
    shown = subprocess.run([sys.executable, "-m", "finetuned", "status", job["id"], "--root", str(ws.root)],
                           capture_output=True, text=True, timeout=60).stdout
    assert "warning: 6 of 20 examples" in shown

"""Preference files on the real queue: dropped, trained as preferences, controlled and resumed like any job."""

from __future__ import annotations

import json

import pytest
from helpers import (
    Driver,
    chat_lines,
    drop,
    held_at,
    jobs_by_file,
    logged_losses,
    make_workspace,
    queue_status,
    read_json,
    status_of,
    tiny_config,
    train_in_process,
    wait_for,
    write_jsonl,
)

from finetuned.config import save_config


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Tell me about item {i}.", "chosen": f"Item {i} is ready. Done.",
             "rejected": f"Item {i} is ready. Nope."} for i in range(n)]


@pytest.fixture
def pref_ws(tmp_path, tiny_model_dir):
    return make_workspace(tmp_path / "ws", tiny_config(mode="independent", checkpoint_every_steps=1000))


def test_sft_then_dpo_then_priority_sft_preempting_it_on_one_loaded_model(pref_ws, start_daemon, gate, tmp_path):
    ws = pref_ws
    daemon = start_daemon(ws)
    drop(ws, "sft.jsonl", chat_lines(8))
    wait_for(lambda: status_of(ws, "sft.jsonl") == "completed", 120, "the SFT job", daemon=daemon)
    worker = daemon.worker_pid()
    gate.hold(3)
    drop(ws, "prefs.jsonl", pairs(40))
    held_at(ws, "prefs.jsonl", 3, daemon)
    drop(ws, "urgent.jsonl", chat_lines(4, "yo"), priority=True)
    wait_for(lambda: status_of(ws, "urgent.jsonl") == "completed", 120, "the priority SFT job", daemon=daemon)
    assert jobs_by_file(ws)["prefs.jsonl"]["runs"][0]["reason"] == "preempt at step 3"
    gate.release()
    wait_for(lambda: status_of(ws, "prefs.jsonl") == "completed", 240, "the DPO job", daemon=daemon)

    dpo = jobs_by_file(ws)["prefs.jsonl"]
    record = read_json(ws.adapter_record(dpo["id"]))
    assert (record["objective"], record["format"]) == ("dpo", "preference")
    assert daemon.worker_pid() == worker, "one worker for every job"
    loads = [line for path in ws.logs.glob("training_*.log") for line in path.read_text().splitlines()
             if " loaded builtin:tiny " in line]
    assert len(loads) == 1, loads

    alone = Driver()  # the same DPO job, uninterrupted, in this process
    config = ws.load_config()
    train_in_process(make_workspace(tmp_path / "alone", config), config, "job",
                     write_jsonl(tmp_path / "prefs.jsonl", pairs(40)), alone)
    losses = logged_losses(ws, dpo["id"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(alone.losses(), abs=1e-6)


def test_a_dpo_job_interrupted_every_way_logs_the_losses_of_one_left_alone(pref_ws, start_daemon, gate):
    ws = pref_ws
    config = ws.load_config()
    config.inbox.allow_duplicates = True
    save_config(ws.config_path, config)
    daemon = start_daemon(ws)
    records = pairs(60)
    drop(ws, "reference.jsonl", records)
    wait_for(lambda: status_of(ws, "reference.jsonl") == "completed", 240, "the reference run", daemon=daemon)
    reference = logged_losses(ws, jobs_by_file(ws)["reference.jsonl"]["id"])
    assert len(reference) > 16

    gate.hold(4)
    drop(ws, "again.jsonl", records)
    held_at(ws, "again.jsonl", 4, daemon)
    (ws.control / ".pause").touch()
    wait_for(lambda: queue_status(ws, "again.jsonl") == "paused", 30, "paused", daemon=daemon)
    gate.hold(8)
    (ws.control / ".pause").unlink()
    held_at(ws, "again.jsonl", 8, daemon)
    (ws.control / ".stop").touch()
    wait_for(lambda: not (ws.control / ".stop").exists(), 30, "the stop", daemon=daemon)
    gate.hold(13)
    held_at(ws, "again.jsonl", 13, daemon)
    daemon.kill()
    gate.release()
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "again.jsonl") == "completed", 240, "the interrupted run", daemon=daemon)
    job = jobs_by_file(ws)["again.jsonl"]
    reasons = [run["reason"] for run in job["runs"]]
    assert reasons[:2] == ["paused", "stop at step 8"] and "daemon stopped" in reasons, reasons
    again = logged_losses(ws, job["id"])
    assert sorted(again) == sorted(reference)
    for step in reference:
        assert again[step] == pytest.approx(reference[step], abs=1e-6), f"step {step}"
    metrics = [json.loads(line) for line in ws.metrics_file(job["id"]).read_text().splitlines()]
    assert all("rewards/accuracies" in m for m in metrics)

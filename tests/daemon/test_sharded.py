"""strategy fsdp on two gloo ranks: sharded weights train like one process; sharded checkpoints move between
world sizes (DCP reshards), and a full fine-tune publishes a whole model."""

from __future__ import annotations

import pytest
from helpers import (
    chat_lines,
    drop,
    held_at,
    jobs_by_file,
    logged_losses,
    make_workspace,
    read_json,
    status_of,
    wait_for,
)
from test_distributed import on_ranks, one_process, solo_losses

from finetuned import checkpoints
from finetuned.config import Config, save_config


def sharded(**training) -> Config:
    config = on_ranks(**training)
    config.distributed.strategy = "fsdp"
    return config


def test_sharded_lora_trains_like_one_process_and_resumes_on_any_world_size(tmp_path, tiny_model_dir, start_daemon,
                                                                            gate):
    """2 sharded ranks -> a sharded checkpoint -> 1 process -> a whole checkpoint -> 2 sharded ranks again: the
    losses are one uninterrupted process's, and the adapter is whole."""
    config = sharded(checkpoint_every_steps=2, epochs=2)
    records = chat_lines(60)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    gate.hold(4)
    drop(ws, "job.jsonl", records)
    held_at(ws, "job.jsonl", 4, daemon)
    job_dir = ws.job_checkpoints(jobs_by_file(ws)["job.jsonl"]["id"])
    periodic = checkpoints.path_for(job_dir, 4) / checkpoints.STATE
    written = periodic.stat().st_mtime_ns  # both ranks wrote their shards of it before the gate
    assert daemon.stop() == 0
    saved = checkpoints.latest(job_dir)
    assert saved[0].step == 4 and checkpoints.is_sharded(saved[1])
    assert periodic.stat().st_mtime_ns == written, "the stop keeps the step's checkpoint, not writes it again"

    save_config(ws.config_path, one_process(config))
    gate.hold(8)
    daemon = start_daemon(ws)
    held_at(ws, "job.jsonl", 8, daemon)
    assert daemon.stop() == 0
    assert not checkpoints.is_sharded(checkpoints.latest(job_dir)[1])

    save_config(ws.config_path, config)
    gate.release()
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "job.jsonl") == "completed", 300, "the job, sharded again", daemon=daemon)
    job = jobs_by_file(ws)["job.jsonl"]
    assert [run["from_step"] for run in job["runs"]] == [0, 4, 8]
    losses = logged_losses(ws, job["id"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(solo_losses(tmp_path, config, records), abs=1e-5)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    record = read_json(ws.adapter_dir(job["id"]) / "job.json")
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(record["base_path"]), ws.adapter_dir(job["id"]))


def test_a_sharded_full_fine_tune_publishes_a_whole_model(tmp_path, tiny_model_dir, start_daemon):
    config = sharded(learning_rate=1e-3)
    config.method = "full"
    records = chat_lines(30)
    ws = make_workspace(tmp_path / "ws", config)
    daemon = start_daemon(ws)
    drop(ws, "job.jsonl", records)
    wait_for(lambda: status_of(ws, "job.jsonl") == "completed", 300, "the full fine-tune", daemon=daemon)
    job = jobs_by_file(ws)["job.jsonl"]
    losses = logged_losses(ws, job["id"])
    assert [losses[s] for s in sorted(losses)] == pytest.approx(solo_losses(tmp_path, config, records), abs=1e-5)

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(ws.adapter_dir(job["id"]))
    assert model.config.hidden_size == 64

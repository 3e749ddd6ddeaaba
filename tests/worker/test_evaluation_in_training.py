"""Suites while a job trains: scores logged and recorded, early stopping at the step the rule says, the best kept."""

from __future__ import annotations

import json

import pytest
from helpers import Driver, chat_lines, make_workspace, tiny_config, train_in_process, with_suites, write_jsonl

from finetuned import checkpoints
from finetuned.config import EarlyStopping
from finetuned.processes.protocol import Completed, Yielded
from finetuned.worker import tensors


def stopping_config(**evaluation):
    config = tiny_config(mode="independent", epochs=3, checkpoint_every_steps=2)
    config.training.early_stopping = EarlyStopping(metric="eval:never", patience=2)
    config.evaluation.budget, config.evaluation.max_new_tokens = 1000.0, 6  # every round, however slow the machine
    for key, value in evaluation.items():
        setattr(config.evaluation, key, value)
    return config


def metrics(ws, job_id):
    return [json.loads(line) for line in ws.metrics_file(job_id).read_text().splitlines()]


@pytest.mark.e2e
def test_a_metric_that_stops_improving_ends_the_job_early_and_the_best_is_kept_and_published(tmp_path, tiny_model_dir):
    config = stopping_config(publish="best")
    ws = with_suites(make_workspace(tmp_path / "ws", config))
    driver = Driver()
    train_in_process(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(40)), driver)
    summary = driver.last(Completed).summary
    assert summary["total_steps"] == 30
    assert summary["steps"] == 6, "measured at 2 (best), 4 and 6 (no better, twice): stops at 6"
    stopped = summary["early_stopped"]
    assert (stopped["step"], stopped["best_step"], stopped["metric"]) == (6, 2, "eval:never")
    assert "has not improved" in stopped["reason"]
    scored = [m for m in metrics(ws, "job") if "eval/hi" in m]
    assert [m["step"] for m in scored] == [2, 4, 6] and all(m["eval/never"] == 0.0 for m in scored)
    assert summary["evaluation"]["scores"] == {"hi": scored[-1]["eval/hi"], "never": 0.0}

    job_dir = ws.job_checkpoints("job")
    best = checkpoints.path_for(job_dir, 2)
    assert (best / checkpoints.BEST).exists()
    checkpoints.prune(job_dir, 1)  # what the daemon does when the job completes
    assert best.exists() and checkpoints.latest(job_dir)[0].step == 6, "the best survives pruning, beside the last"
    assert summary["published_step"] == 2
    from safetensors.torch import load_file

    published = load_file(ws.adapter_dir("job") / "adapter_model.safetensors")
    saved = {name.replace(".default", ""): weight for name, weight in tensors.load_weights(best).items()}
    assert set(published) == set(saved)
    assert all(published[name].equal(saved[name]) for name in saved), "the adapter holds the best step's weights"


@pytest.mark.e2e
def test_a_resumed_job_stops_where_an_uninterrupted_one_would(tmp_path, tiny_model_dir):
    config = stopping_config()
    records = chat_lines(40)
    plain = Driver()
    ws_a = with_suites(make_workspace(tmp_path / "a", config))
    train_in_process(ws_a, config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)
    ws_b = with_suites(make_workspace(tmp_path / "b", config))
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=5)
    cache = train_in_process(ws_b, config, "job", file_b, interrupted)
    assert interrupted.last(Yielded).step == 5
    train_in_process(ws_b, config, "job", file_b, interrupted, cache)
    assert interrupted.last(Completed).summary["early_stopped"] == plain.last(Completed).summary["early_stopped"]
    assert interrupted.losses() == pytest.approx(plain.losses(), abs=1e-6)


def test_without_suites_or_early_stopping_nothing_changes(tmp_path, tiny_model_dir):
    config = tiny_config(mode="independent", checkpoint_every_steps=2)
    config.training.early_stopping = EarlyStopping(metric="val_loss", patience=1)  # no holdout: never measured
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    train_in_process(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(12)), driver)
    summary = driver.last(Completed).summary
    assert summary["steps"] == summary["total_steps"] and "early_stopped" not in summary
    assert "evaluation" not in summary and summary["published_step"] == summary["steps"]


@pytest.mark.e2e
@pytest.mark.parametrize(("budget", "expected"), [(0.0, "the end only"), (1000.0, "every checkpoint")])
def test_the_budget_skips_rounds_but_never_the_last(tmp_path, tiny_model_dir, budget, expected):
    config = tiny_config(mode="independent", epochs=2, checkpoint_every_steps=2)
    config.evaluation.budget, config.evaluation.max_new_tokens = budget, 4
    ws = with_suites(make_workspace(tmp_path / "ws", config))
    driver = Driver()
    train_in_process(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(16)), driver)
    last = driver.last(Completed).summary["steps"]
    scored = [m["step"] for m in metrics(ws, "job") if "eval/hi" in m]
    every = sorted({*range(2, last + 1, 2), last})
    assert scored == ([last] if expected == "the end only" else every), expected


def test_a_control_that_arrives_during_a_round_abandons_it_and_is_taken_at_once(tmp_path, tiny_model_dir, caplog):
    """A round took 121 s after a 64 s step, and `.stop` waited for it: now it gives way, scoring nothing."""
    import logging

    config = stopping_config()
    config.training.early_stopping = None
    ws = with_suites(make_workspace(tmp_path / "ws", config))
    driver = Driver(yield_when_evaluating=True)
    with caplog.at_level(logging.INFO, logger="finetuned.worker.measure"):
        train_in_process(ws, config, "job", write_jsonl(tmp_path / "d.jsonl", chat_lines(40)), driver)
    assert driver.last(Yielded).step == 2, "the stop is taken at the boundary right after the round"
    assert not [m for m in metrics(ws, "job") if "eval/hi" in m], "an abandoned round logs no score"
    assert "evaluation at step 2 abandoned" in caplog.text

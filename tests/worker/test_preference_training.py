"""Preference jobs with the real recipe on builtin:tiny: they learn, resume exactly, and keep their reference once."""

from __future__ import annotations

import json

import pytest
from helpers import Driver, make_workspace, tiny_config, train_in_process, write_jsonl

from finetuned.processes.protocol import Completed, Yielded
from finetuned.worker.objectives.reference import REFERENCE

pytestmark = pytest.mark.e2e  # each trains real preference jobs to the end, some twice: tens of seconds


def pairs(n: int) -> list[dict]:
    """A learnable preference: the same answer, ending in 'Done.' (chosen) rather than 'Nope.' (rejected)."""
    return [{"prompt": f"Tell me about item {i}.", "chosen": f"Item {i} is ready. Done.",
             "rejected": f"Item {i} is ready. Nope."} for i in range(n)]


def labelled(n: int) -> list[dict]:
    return [{"prompt": f"Tell me about item {i}.", "completion": f"Item {i} is ready. {'Done.' if i % 2 else 'Nope.'}",
             "label": bool(i % 2)} for i in range(n)]


def metrics(ws, job_id: str) -> list[dict]:
    return [json.loads(line) for line in ws.metrics_file(job_id).read_text().splitlines()]


@pytest.fixture
def config():
    config = tiny_config(mode="independent", epochs=2, learning_rate=2e-3, checkpoint_every_steps=100)
    config.lora.dropout = 0.1  # turned off for preference jobs, as TRL does: the losses below must not depend on it
    return config


def test_dpo_learns_a_toy_preference(tmp_path, tiny_model_dir, config):
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    train_in_process(ws, config, "dpo", write_jsonl(tmp_path / "p.jsonl", pairs(40)), driver)
    summary = driver.last(Completed).summary
    assert summary["objective"] == "dpo" and summary["preference"]["beta"] == 0.1
    lines = metrics(ws, "dpo")
    assert lines[0]["loss"] == pytest.approx(0.6931, abs=1e-3), "the reference is the weights the job starts from"
    assert lines[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    late = lines[-5:]
    assert sum(m["rewards/accuracies"] for m in late) / len(late) > 0.9
    assert min(m["rewards/margins"] for m in late) > max(m["rewards/margins"] for m in lines[:2]) + 0.5, \
        "the margin grows"
    assert (ws.tokenized / "dpo" / REFERENCE).exists(), "kept beside the tokens while the job lives"


@pytest.mark.parametrize("objective", ["dpo", "orpo", "simpo", "kto"])
def test_a_stopped_preference_job_resumes_with_the_same_losses(tmp_path, tiny_model_dir, config, objective):
    config.preference.objective = "dpo" if objective == "kto" else objective
    records = labelled(24) if objective == "kto" else pairs(24)
    plain = Driver()
    ws_a = make_workspace(tmp_path / "a", config)
    train_in_process(ws_a, config, "job", write_jsonl(tmp_path / "a.jsonl", records), plain)
    assert plain.last(Completed).summary["objective"] == objective

    ws_b = make_workspace(tmp_path / "b", config)
    file_b = write_jsonl(tmp_path / "b.jsonl", records)
    interrupted = Driver(yield_at=5)
    cache = train_in_process(ws_b, config, "job", file_b, interrupted)
    assert interrupted.last(Yielded).step == 5
    reference = ws_b.tokenized / "job" / REFERENCE
    written = reference.stat().st_mtime_ns if reference.exists() else None
    train_in_process(ws_b, config, "job", file_b, interrupted, cache)
    assert interrupted.losses() == pytest.approx(plain.losses(), abs=1e-6)
    if written is not None:
        assert reference.stat().st_mtime_ns == written, "the reference is computed once, before the first step"
    logged = {m["step"]: m for m in metrics(ws_b, "job")}
    for m in metrics(ws_a, "job"):
        for name in [k for k in m if "/" in k or k == "kl"]:
            assert logged[m["step"]][name] == pytest.approx(m[name], abs=1e-5), (m["step"], name)


def test_a_preference_job_leaves_dropout_as_the_next_job_expects_it(tmp_path, tiny_model_dir, config):
    ws = make_workspace(tmp_path / "ws", config)
    driver = Driver()
    cache = train_in_process(ws, config, "dpo", write_jsonl(tmp_path / "p.jsonl", pairs(8)), driver)
    rates = {m.p for m in cache.loaded.model.modules() if m.__class__.__name__ == "Dropout"}
    assert 0.1 in rates, "the SFT job after it trains with the configured LoRA dropout"

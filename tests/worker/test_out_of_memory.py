"""Steps that do not die of memory: an out-of-memory (injected on the CPU at chosen forwards) halves the
micro-batch and doubles accumulation, with the same losses; one row that still fails fails the job by name;
evaluation, the held-out loss and previews shrink or skip the same way."""

from __future__ import annotations

import logging
import math

import pytest
import torch
from helpers import (
    Driver,
    chat_lines,
    drop,
    make_workspace,
    read_json,
    status_of,
    tiny_config,
    train_in_process,
    wait_for,
    write_jsonl,
)

from finetuned import checkpoints
from finetuned.config import EvaluationSettings
from finetuned.evaluation.runner import Evaluator
from finetuned.evaluation.suites import Case, Suite
from finetuned.models import memory
from finetuned.models.builtin import materialize
from finetuned.models.loading import load_model, load_tokenizer
from finetuned.processes.protocol import Completed, Failed, FailKind, Phase
from finetuned.worker import tensors


def exact_config(**training):
    """Four rows a micro-batch, no dropout: a step's loss depends on its rows only, not on how they are split."""
    config = tiny_config(**{"mode": "independent", "batch_size": 4, "epochs": 1, "checkpoint_every_steps": 100,
                            **training})
    config.lora.dropout = 0.0
    config.previews.every_steps = 0
    config.data.packing = False  # a row is an example: the counts below are examples
    return config


def run(tmp_path, name, monkeypatch, spec=None, config=None, lines=None):
    config = config or exact_config()
    if spec:
        monkeypatch.setenv(memory.INJECT_ENV, spec)
    else:
        monkeypatch.delenv(memory.INJECT_ENV, raising=False)
    ws = make_workspace(tmp_path / name, config)
    driver = Driver()
    train_in_process(ws, config, "job", write_jsonl(tmp_path / f"{name}.jsonl", lines or chat_lines(32)), driver)
    return ws, driver


def test_real_allocation_failures_are_recognised():
    with pytest.raises(RuntimeError) as caught:
        torch.empty(2**62, dtype=torch.uint8)  # the CPU allocator's own refusal
    assert memory.is_out_of_memory(caught.value)
    assert memory.is_out_of_memory(MemoryError())
    assert not memory.is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


PAIRS = [{"prompt": f"Item {i}?", "chosen": f"Item {i}. Done.", "rejected": f"Item {i}. Nope."} for i in range(32)]


# A pair is two sequences side by side: its forwards see twice the rows.
@pytest.mark.e2e
@pytest.mark.parametrize(("lines", "spec"), [(None, "train:2=2,train:5=1"), (PAIRS, "train:2=4,train:5=2")],
                         ids=["sft", "dpo"])
def test_out_of_memory_at_several_steps_halves_the_micro_batch_with_equal_losses(tmp_path, monkeypatch, caplog,
                                                                                 lines, spec):
    ws_plain, plain = run(tmp_path, "plain", monkeypatch, lines=lines)
    with caplog.at_level(logging.WARNING, logger="finetuned.worker.recipe"):
        ws, injected = run(tmp_path, "injected", monkeypatch, spec, lines=lines)
    assert len(plain.losses()) == 8
    # To float rounding: the split changes only the order of the sums.
    assert injected.losses() == pytest.approx(plain.losses(), rel=1e-5, abs=1e-6)
    reasons = [m.reason for m in injected.of(Phase) if m.reason]
    assert reasons[0].startswith("out of memory at step 2 with 4 rows a micro-batch; 2 from now on, 2x as many")
    assert reasons[1].startswith("out of memory at step 5 with 2 rows a micro-batch; 1 from now on, 4x as many")
    assert len(reasons) == 2 and "out of memory at step 5" in caplog.text
    progress, path = checkpoints.latest(ws.job_checkpoints("job"))
    assert progress.micro_batch_split == 4, "the smaller size is kept for the job (and its resume)"
    plain_weights = tensors.load_weights(checkpoints.latest(ws_plain.job_checkpoints("job"))[1])
    for name, value in tensors.load_weights(path).items():
        assert torch.allclose(value, plain_weights[name], atol=1e-5), name
    assert injected.last(Completed).summary["steps"] == 8


def test_one_row_that_does_not_fit_fails_the_job_naming_the_longest_sequence(tmp_path, monkeypatch):
    lines = chat_lines(32)
    lines[9]["messages"][1]["content"] = "a much longer answer than the others " * 4
    _, driver = run(tmp_path, "fails", monkeypatch, "train:3=0", lines=lines)
    failed = driver.last(Failed)
    assert (failed.kind, failed.step) == (FailKind.MEMORY, 3)
    assert failed.reason.startswith("out of memory at step 3 even with one row a micro-batch; its longest sequence "
                                    "is example ")
    assert "max_seq_len" in failed.reason and "injected" in failed.reason
    assert len([m for m in driver.of(Phase) if m.reason]) == 2, "4 rows, then 2, then 1: two halvings, then failed"
    assert not driver.of(Completed)


def test_the_longest_sequence_is_the_one_named(tmp_path, monkeypatch):
    lines = chat_lines(4)  # one step of four
    lines[2]["messages"][1]["content"] = "a long answer, " * 10
    _, driver = run(tmp_path, "long", monkeypatch, "train:1=0", lines=lines)
    reason = driver.last(Failed).reason
    assert "its longest sequence is example 2 (" in reason
    assert "its answer begins 'a long answer, a long answer," in reason


@pytest.mark.e2e
def test_evaluation_halves_its_batch_and_gives_the_same_answers(tmp_path, monkeypatch):
    folder = materialize("builtin:tiny", tmp_path / "base")
    model, tokenizer = load_model(folder), load_tokenizer(folder)
    suite = Suite(name="s", cases=[Case(prompt=f"Say hi number {i}.", expected="hi", scorer="contains")
                                   for i in range(6)])
    settings = EvaluationSettings(batch_size=4, max_new_tokens=5)
    monkeypatch.delenv(memory.INJECT_ENV, raising=False)
    plain = Evaluator(tokenizer, settings)
    expected = plain.answers(model, [c.conversation() for c in suite.cases[:4]], math.inf)

    monkeypatch.setenv(memory.INJECT_ENV, "eval=1")
    memory.hook(model)
    shrunk = Evaluator(tokenizer, settings)
    assert shrunk.run(model, [suite]) == plain.run(model, [suite])
    assert shrunk.batch_size == 1
    with memory.phase(memory.EVAL):
        assert [shrunk.answers(model, [c.conversation()], math.inf)[0] for c in suite.cases[:4]] == expected

    monkeypatch.setenv(memory.INJECT_ENV, "eval=0")  # nothing fits: every case fails, training is not harmed
    assert Evaluator(tokenizer, settings).run(model, [suite]) == {"s": 0.0}


@pytest.mark.e2e
def test_held_out_loss_and_previews_survive_out_of_memory(tmp_path, monkeypatch):
    config = exact_config(checkpoint_every_steps=4)
    config.data.holdout_fraction = 0.25
    config.previews.every_steps, config.previews.budget = 4, 1.0
    _, plain = run(tmp_path, "plain", monkeypatch, config=config, lines=chat_lines(40))
    ws, injected = run(tmp_path, "injected", monkeypatch, "eval=1", config=config, lines=chat_lines(40))
    assert plain.last(Completed).summary["val_loss"] == pytest.approx(injected.last(Completed).summary["val_loss"],
                                                                       rel=1e-5)
    assert injected.losses() == plain.losses()
    assert ws.previews_file("job").exists(), "previews run one prompt at a time: they fit"


def test_the_daemon_fails_a_job_that_does_not_fit_and_trains_the_next(tmp_path, monkeypatch, start_daemon):
    monkeypatch.setenv(memory.INJECT_ENV, "train:2=0")  # step 2 of every job: the first job, the second one
    config = exact_config()
    ws = make_workspace(tmp_path / "ws", config)
    drop(ws, "big.jsonl", chat_lines(8))
    drop(ws, "small.jsonl", chat_lines(4, tag="yo"))  # one step: it fits
    daemon = start_daemon(ws)
    wait_for(lambda: status_of(ws, "small.jsonl") == "completed", 180, "the next job to train", daemon=daemon)
    assert status_of(ws, "big.jsonl") == "failed"
    error = read_json(ws.failed / "big.jsonl.error.json")
    assert error["error"].startswith("out of memory at step 2 even with one row a micro-batch; its longest sequence")
    assert error["step"] == 1, "the step it reached"

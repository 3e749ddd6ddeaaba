"""Asks answered by the training worker between steps: on the weights of that step, without changing the run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import Driver, chat_lines, make_workspace, tiny_config, train_in_process, write_jsonl

from finetuned.chat.generate import reply
from finetuned.checkpoints import path_for
from finetuned.data.masking import prompt_ids
from finetuned.lifecycle.targets import Target, load
from finetuned.processes.protocol import Answer, Ask, Completed

QUESTION = ({"role": "user", "content": "Say hi number 2."},)


def _ask(name: str, max_new_tokens: int = 12) -> Ask:
    return Ask(id=name, messages=QUESTION, max_new_tokens=max_new_tokens, seconds=30)


def _train(root: Path, budget: float, asks: dict[int, list[Ask]] | None = None) -> tuple[Driver, object]:
    config = tiny_config(max_steps=6, checkpoint_every_steps=3)
    config.previews.every_steps = 0
    config.previews.budget = budget
    config.lifecycle.min_free_gb = 0.0
    ws = make_workspace(root, config)
    driver = Driver(asks=asks)
    file = write_jsonl(root / "data.jsonl", chat_lines(24))
    train_in_process(ws, config, "20250101_000000", file, driver)
    return driver, ws


@pytest.mark.e2e
def test_an_ask_is_answered_with_the_weights_of_its_step_and_changes_no_loss(tmp_path: Path) -> None:
    # One ask: the first is always within the budget (nothing spent yet), so it is answered at its step.
    asked, ws = _train(tmp_path / "asked", 1.0, {3: [_ask("b")]})
    plain, _ = _train(tmp_path / "plain", 1.0)
    assert asked.losses() == plain.losses(), "greedy answers draw no random numbers: the run is the same"
    (answer,) = asked.of(Answer)
    assert (answer.id, answer.step, answer.line_step, answer.error) == ("b", 3, 3, "")
    assert answer.source == "job 20250101_000000 at step 3"
    # the checkpoint of step 3, loaded apart from the worker, answers the same, token for token
    config = ws.load_config()
    base = Target("version", "tiny", ws.base_models / "tiny")
    at_3 = Target("checkpoint", "step 3", base.model, checkpoint=path_for(ws.job_checkpoints("20250101_000000"), 3))
    answers = {}
    for name, target in (("step 3", at_3), ("base", base)):
        model, tokenizer = load(target, config)
        answers[name] = reply(model, tokenizer, prompt_ids(tokenizer, list(QUESTION)), 12)
    assert answer.text == answers["step 3"]
    assert answer.text != answers["base"], "three steps of training change the answer"
    assert asked.of(Completed), "the job still completes"


def test_asks_share_the_previews_budget(tmp_path: Path) -> None:
    """With no budget left after the first answer, the others wait; at the job's end they are the daemon's."""
    driver, _ = _train(tmp_path / "ws", 0.0, {1: [_ask("first")], 2: [_ask("second")], 4: [_ask("third")]})
    assert [a.id for a in driver.of(Answer)] == ["first"]
    assert driver.of(Completed)


def test_a_question_the_template_refuses_is_answered_with_the_error_and_training_goes_on(tmp_path: Path) -> None:
    bad = Ask(id="bad", messages=({"role": "user", "content": 3},), max_new_tokens=4, seconds=30)  # type: ignore[dict-item]
    driver, _ = _train(tmp_path / "ws", 1.0, {2: [bad]})
    (answer,) = driver.of(Answer)
    assert answer.error and answer.text == ""
    assert driver.of(Completed)


def test_generation_is_left_in_the_mode_it_found(tiny_model_dir: Path) -> None:
    from finetuned.models.loading import load_model, load_tokenizer

    model, tokenizer = load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    model.train()
    with torch.random.fork_rng():
        state = torch.random.get_rng_state()
        reply(model, tokenizer, prompt_ids(tokenizer, list(QUESTION)), 4)
        assert torch.equal(state, torch.random.get_rng_state()), "greedy generation draws no random numbers"
    assert model.training

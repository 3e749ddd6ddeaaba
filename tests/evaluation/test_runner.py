"""The runner on builtin:tiny: greedy answers scored as the scorers say, choices by likelihood, a time limit."""

from __future__ import annotations

import time

import pytest
import torch

from finetuned.config import EvaluationSettings
from finetuned.evaluation.runner import Evaluator
from finetuned.evaluation.suites import Case, Suite
from finetuned.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def test_generated_cases_pass_when_the_greedy_answer_is_right(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    evaluator = Evaluator(tokenizer, EvaluationSettings(max_new_tokens=6))
    conversation = [{"role": "user", "content": "Say hi."}]
    (answer,) = evaluator.answers(model, [conversation], deadline=float("inf"))
    assert answer.strip(), "the tiny model answers something"
    right = Case(messages=conversation, expected=answer.strip(), scorer="exact")
    wrong = Case(messages=conversation, expected=answer.strip() + " not this", scorer="exact")
    near = Case(prompt="Say hi.", expected=answer.strip()[:3], scorer="contains")
    assert evaluator.run(model, [Suite(name="s", cases=[right, wrong, near])]) == {"s": pytest.approx(2 / 3)}


def test_a_choice_is_the_likeliest_option(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    evaluator = Evaluator(tokenizer, EvaluationSettings())
    options = ["red", "a very long and unlikely answer indeed", "blue"]
    prompt = evaluator.prompt_ids([{"role": "user", "content": "Pick a colour."}])
    scores = []
    with torch.no_grad():
        for option in options:
            tokens = tokenizer(option, add_special_tokens=False)["input_ids"]
            logits = model(input_ids=torch.tensor([prompt + tokens])).logits[0, len(prompt) - 1 : -1]
            scores.append(float(torch.log_softmax(logits, -1).gather(1, torch.tensor(tokens)[:, None]).sum()))
    likeliest = options[max(range(3), key=scores.__getitem__)]
    picked = [Case(prompt="Pick a colour.", choices=options, expected=option, scorer="choice") for option in options]
    result = evaluator.run(model, [Suite(name="c", cases=picked)])
    assert result == {"c": pytest.approx(1 / 3)}
    assert evaluator.choose(model, picked[0]) == likeliest


def test_a_suite_past_its_time_limit_does_not_count_the_cases_it_did_not_reach(model_and_tokenizer, caplog):
    """A case a round did not reach is no failure: a suite that reached none has no score at all."""
    model, tokenizer = model_and_tokenizer
    evaluator = Evaluator(tokenizer, EvaluationSettings(suite_seconds=1e-6, batch_size=1))
    cases = [Case(prompt="Say hi.", expected=".*", scorer="regex") for _ in range(5)]
    assert evaluator.run(model, [Suite(name="slow", cases=cases)]) == {}
    assert "ran out after 0 of 5 cases; the rest are not counted" in caplog.text
    reached_one = Evaluator(tokenizer, EvaluationSettings(batch_size=1))
    until = time.monotonic() + 0.05  # the round's deadline (what is left of the budget) ends it early
    scores = reached_one.run(model, [Suite(name="cut", cases=cases * 200)], until=until)
    assert scores == {"cut": 1.0}, "the reached cases alone: every one passed"


def test_a_round_gives_way_to_a_waiting_control(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    cases = [Case(prompt="Say hi.", expected=".*", scorer="regex") for _ in range(50)]
    asked = []
    stop = lambda: asked.append(1) or len(asked) > 2  # noqa: E731 - a control arrives during the third batch
    assert Evaluator(tokenizer, EvaluationSettings(batch_size=2)).run(model, [Suite(name="s", cases=cases)],
                                                                      stop) is None
    assert len(asked) == 3, "checked before each batch, and the round ended at once"

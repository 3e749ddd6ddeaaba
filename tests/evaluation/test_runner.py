"""The runner on builtin:tiny: greedy answers scored as the scorers say, choices by likelihood, a time limit."""

from __future__ import annotations

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


def test_a_suite_past_its_time_limit_counts_the_rest_as_failed(model_and_tokenizer, caplog):
    model, tokenizer = model_and_tokenizer
    evaluator = Evaluator(tokenizer, EvaluationSettings(suite_seconds=1e-6, batch_size=1))
    cases = [Case(prompt="Say hi.", expected="x", scorer="contains") for _ in range(5)]
    assert evaluator.run(model, [Suite(name="slow", cases=cases)]) == {"slow": 0.0}
    assert "ran out after" in caplog.text

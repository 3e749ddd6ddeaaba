"""Generation on builtin:tiny: the streamed answer is the whole answer, sampling is seeded, a stop stops."""

from __future__ import annotations

import threading

import pytest
import torch

from finetuned.chat.generate import Sampling, reply, stream
from finetuned.data.masking import prompt_ids
from finetuned.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def _ids(tokenizer, text: str) -> list[int]:
    return prompt_ids(tokenizer, [{"role": "user", "content": text}])


def test_the_streamed_answer_is_the_greedy_answer(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    for question in ("Say hi.", "What is 2 + 2?", "Écris un mot."):
        ids = _ids(tokenizer, question)
        pieces = list(stream(model, tokenizer, ids, 24))
        assert len(pieces) > 1, "it comes piece by piece"
        assert "".join(pieces) == reply(model, tokenizer, ids, 24)


def test_sampling_with_a_seed_repeats_and_differs_from_greedy(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = _ids(tokenizer, "Tell me something.")
    hot = Sampling(temperature=1.5, top_k=50, seed=7)
    first = reply(model, tokenizer, ids, 16, hot)
    assert first == reply(model, tokenizer, ids, 16, hot) == "".join(stream(model, tokenizer, ids, 16, hot))
    assert first != reply(model, tokenizer, ids, 16)
    assert first != reply(model, tokenizer, ids, 16, Sampling(temperature=1.5, top_k=50, seed=8))


def test_a_stop_ends_the_generation_and_an_error_reaches_the_reader(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    ids = _ids(tokenizer, "Go on and on.")
    stop = threading.Event()
    pieces = []
    for piece in stream(model, tokenizer, ids, 2000, stop=stop):
        pieces.append(piece)
        stop.set()
    assert len(tokenizer("".join(pieces), add_special_tokens=False)["input_ids"]) < 40, "it stopped at once"
    with pytest.raises(ValueError):
        list(stream(model, tokenizer, ids, 8, Sampling(temperature=1.0, top_p=-1.0)))

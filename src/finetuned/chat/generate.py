"""Generating an answer: whole (between training steps, in the answerer) or streamed (the terminal).

Greedy decoding is the default everywhere. The same prompt then always gets the same
answer, so two checkpoints are compared on their weights and not on the dice; it is how
previews and evaluation decode, so what a person sees in a chat is what they measure; and
it draws no random numbers, so a question answered between training steps leaves the
run's RNG streams, and so its losses, exactly as they were.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen: `temperature` 0 is greedy (the likeliest token, always)."""

    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0: no limit
    seed: int | None = None  # sampling only: the same seed gives the same answers

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def options(self) -> dict[str, Any]:
        if self.greedy:
            # top_p/top_k set too: a model's generation_config may carry sampling defaults, which warn
            return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k}


GREEDY = Sampling()


class _Stop(StoppingCriteria):
    """Ends a generation from another thread (Ctrl+C in the terminal)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _arguments(model: torch.nn.Module, tokenizer: Any, ids: list[int], max_new_tokens: int, sampling: Sampling,
               max_time: float | None) -> dict[str, Any]:
    device = next(model.parameters()).device
    tensor = torch.tensor([ids], device=device)
    arguments = {"input_ids": tensor, "attention_mask": torch.ones_like(tensor), "max_new_tokens": max_new_tokens,
                 "pad_token_id": _pad_id(tokenizer), **sampling.options()}
    if max_time is not None:
        arguments["max_time"] = max_time
    return arguments


def _seeded(sampling: Sampling) -> None:
    if not sampling.greedy and sampling.seed is not None:
        torch.manual_seed(sampling.seed)


@torch.no_grad()
def reply(model: torch.nn.Module, tokenizer: Any, ids: list[int], max_new_tokens: int,
          sampling: Sampling = GREEDY, max_time: float | None = None) -> str:
    """The model's answer to the prompt `ids` (the model is put in eval mode and left as it was)."""
    was_training = model.training
    model.eval()
    try:
        _seeded(sampling)
        out = model.generate(**_arguments(model, tokenizer, ids, max_new_tokens, sampling, max_time))
        return tokenizer.decode(out[0, len(ids):].tolist(), skip_special_tokens=True)
    finally:
        model.train(was_training)


def stream(model: torch.nn.Module, tokenizer: Any, ids: list[int], max_new_tokens: int,
           sampling: Sampling = GREEDY, stop: threading.Event | None = None) -> Iterator[str]:
    """The answer piece by piece as it is generated (transformers' streamer, generation in a thread).

    Setting `stop` ends the generation at the next token; an error in the generation is raised here.
    """
    stop = stop or threading.Event()
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    arguments = _arguments(model, tokenizer, ids, max_new_tokens, sampling, None)
    arguments.update(streamer=streamer, stopping_criteria=StoppingCriteriaList([_Stop(stop)]))
    failure: list[BaseException] = []

    def generate() -> None:
        try:
            with torch.no_grad():
                _seeded(sampling)
                model.generate(**arguments)
        except BaseException as exc:  # handed to the reading thread, which raises it
            failure.append(exc)
            streamer.end()  # else the reader would wait forever for the end of the text

    model.eval()
    thread = threading.Thread(target=generate, name="finetuned chat generation", daemon=True)
    thread.start()
    finished = False
    try:
        yield from streamer
        finished = True
    finally:
        if not finished:
            stop.set()  # an abandoned stream (Ctrl+C, an error while printing) ends its generation
        thread.join()
    if failure:
        raise failure[0]

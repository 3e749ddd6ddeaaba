"""Running suites on a loaded model: greedy answers in batches, or the likeliest of a case's choices.

Every suite has a time limit (`evaluation.suite_seconds`), and a round in training a deadline (what
is left of `evaluation.budget`): cases not reached by then are not counted, and the log says so, so
a stuck generation can never hold training. A round also gives way to a control waiting for the loop
(`stop`): it is abandoned and scores nothing. An out-of-memory halves the batch and tries again; a
single case that does not fit fails. Greedy decoding draws no random numbers: evaluating never
changes a training run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from finetuned.config import EvaluationSettings
from finetuned.data.masking import prompt_ids
from finetuned.evaluation.scorers import passes
from finetuned.evaluation.suites import Case, Suite
from finetuned.models import memory

log = logging.getLogger(__name__)
T = TypeVar("T")


class Abandoned(Exception):  # control flow inside a round: `run` turns it into None, never a user's error
    """A control is waiting: the round gives way."""


class Evaluator:
    def __init__(self, tokenizer: Any, settings: EvaluationSettings, timed: bool = True) -> None:
        """`timed=False` (eval and the gate, outside training) lifts the per-suite limit: a case cut short
        would count as failed and make two models look different for a reason that is not theirs."""
        self.tokenizer = tokenizer
        self.settings = settings
        self.seconds = settings.suite_seconds if timed else float("inf")
        self.batch_size = settings.batch_size  # halved after an out-of-memory, for the evaluator's life

    def run(self, model: torch.nn.Module, suites: list[Suite], stop: Callable[[], bool] | None = None,
            until: float = float("inf")) -> dict[str, float] | None:
        """The share of each suite's cases passed, of those reached before `until` (a monotonic time; a suite
        that reached none has no score); None when `stop()` said a control waits."""
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                scores = {suite.name: self._suite(model, suite, stop, until) for suite in suites}
            return {name: score for name, score in scores.items() if score is not None}
        except Abandoned:
            return None
        finally:
            model.train(was_training)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def _suite(self, model: torch.nn.Module, suite: Suite, stop: Callable[[], bool] | None,
               until: float) -> float | None:
        deadline = min(time.monotonic() + self.seconds, until)
        passed = reached = 0
        pending = [c for c in suite.cases if c.scorer != "choice"]
        while pending and time.monotonic() < deadline:
            if stop is not None and stop():
                raise Abandoned
            batch = pending[: self.batch_size]
            answers = self._fitted(
                lambda batch=batch: self.answers(model, [c.conversation() for c in batch], deadline), suite)
            if answers is None and len(batch) > 1:
                continue  # the batch was halved: the same cases again
            if answers is not None:
                passed += sum(passes(case, answer) for case, answer in zip(batch, answers, strict=True))
            reached += len(batch)
            pending = pending[len(batch):]
        for case in (c for c in suite.cases if c.scorer == "choice"):
            if time.monotonic() >= deadline:
                break
            if stop is not None and stop():
                raise Abandoned
            passed += self._fitted(lambda case=case: self.choose(model, case), suite) == case.expected
            reached += 1
        if reached < len(suite.cases):
            log.warning("suite %s: its time ran out after %d of %d cases; the rest are not counted",
                        suite.name, reached, len(suite.cases))
        return passed / reached if reached else None

    def _fitted(self, run: Callable[[], T], suite: Suite) -> T | None:
        """`run()`, or None after an out-of-memory, with the batch halved for the evaluator's life; a single
        case that does not fit fails, and the suite goes on."""
        try:
            with memory.phase(memory.EVAL):
                return run()
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            error = str(exc).splitlines()[0][:200]
        memory.free()
        if self.batch_size > 1:
            self.batch_size //= 2
            log.warning("suite %s: out of memory; %d cases a batch from now on (%s)", suite.name, self.batch_size,
                        error)
        else:
            log.warning("suite %s: out of memory on a single case, which counts as failed (%s)", suite.name, error)
        return None

    def prompt_ids(self, conversation: list[dict[str, Any]]) -> list[int]:
        return prompt_ids(self.tokenizer, conversation)

    @torch.no_grad()
    def answers(self, model: torch.nn.Module, conversations: list[list[dict[str, Any]]], deadline: float,
                ) -> list[str]:
        """Greedy answers, the batch left-padded, at most `max_new_tokens` each."""
        prompts = [self.prompt_ids(c) for c in conversations]
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        device = next(model.parameters()).device
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        limit = {"max_time": max(0.1, deadline - time.monotonic())} if deadline < float("inf") else {}
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                             max_new_tokens=self.settings.max_new_tokens, pad_token_id=pad, **limit)
        return [self.tokenizer.decode(row[width:].tolist(), skip_special_tokens=True) for row in out]

    @torch.no_grad()
    def choose(self, model: torch.nn.Module, case: Case) -> str:
        """The choice whose tokens are likeliest after the prompt (their log-probabilities summed)."""
        prompt = self.prompt_ids(case.conversation())
        device = next(model.parameters()).device
        best, best_score = case.choices[0], float("-inf")
        for choice in case.choices:
            tokens = self.tokenizer(choice, add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + tokens], device=device)
            logps = torch.log_softmax(model(input_ids=ids).logits[0, len(prompt) - 1 : -1].float(), dim=-1)
            score = float(logps.gather(1, torch.tensor(tokens, device=device)[:, None]).sum())
            if score > best_score:
                best, best_score = choice, score
        return best

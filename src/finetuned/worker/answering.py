"""Questions from the monitor's "Try it" box, answered by the live model between steps.

An ask reaches the loop with the daemon's orders at an optimizer-step boundary and is
answered there, on the weights of that step: greedy, so no random number is drawn and the
run's losses stay exactly what they would have been; with a hard time limit; and while the
previews' time and the asks' together stay within `previews.budget` of the job's training
time. One that would overrun waits for a later boundary. Those still waiting when the job
leaves the worker are the daemon's to hand to the answerer (daemon/askdesk.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from finetuned.chat.generate import reply
from finetuned.checkpoints import TrainingProgress
from finetuned.data.masking import prompt_ids
from finetuned.models import memory
from finetuned.processes.protocol import Answer, Ask
from finetuned.worker.previews import Previewer

log = logging.getLogger(__name__)


class Asks:
    def __init__(self, tokenizer: Any, previews: Previewer, job_id: str, report: Callable[[Answer], None]) -> None:
        self.tokenizer = tokenizer
        self.previews = previews  # whose budget, and whose account of time spent, the asks share
        self.job_id = job_id
        self.report = report
        self.waiting: list[Ask] = []

    def take(self, ask: Ask) -> None:
        self.waiting.append(ask)

    def refuse(self, why: str) -> None:
        """Answer what waits with why this worker cannot: the daemon shows it where the answer would be."""
        for ask in self.waiting:
            self.report(Answer(id=ask.id, text="", source=f"job {self.job_id}", job_id=self.job_id, step=None,
                               line_step=None, seconds=0.0, error=f"not answered: {why}"))
        self.waiting.clear()

    def answer(self, model: torch.nn.Module, progress: TrainingProgress, train_seconds: float) -> None:
        """Answer what waits, oldest first, while the budget allows."""
        while self.waiting and not self.previews.ahead(train_seconds):
            ask = self.waiting.pop(0)
            started = time.monotonic()
            text, error = "", ""
            try:
                with memory.phase(memory.EVAL):
                    text = reply(model, self.tokenizer, prompt_ids(self.tokenizer, ask.messages), ask.max_new_tokens,
                                 max_time=ask.seconds)
            except Exception as exc:  # a question never fails the job it interrupts (out of memory included)
                log.exception("job %s: answering ask %s failed", self.job_id, ask.id)
                error = f"{type(exc).__name__}: {exc}"
            if error:
                memory.free()  # outside the except block: its traceback no longer holds the attempt's tensors
            seconds = time.monotonic() - started
            self.previews.spent += seconds
            self.report(Answer(id=ask.id, text=text, source=f"job {self.job_id} at step {progress.step}",
                               job_id=self.job_id, step=progress.step, line_step=progress.line_step,
                               seconds=round(seconds, 3), error=error))

"""Previews: what the model now answers on a few held-out prompts of the current file.

They run between optimizer steps, every `previews.every_steps`, greedy and
with a hard time limit per round; their total time stays under
`previews.budget` of the job's training time (a round is skipped while
previews are ahead of their budget), so watching never slows training much and a
stuck generation can never hang it. Greedy decoding draws no random numbers, so
previews do not change the training run. Results go to `logs/previews/JOB_ID.jsonl`.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from finetuned.config import PreviewSettings
from finetuned.models import memory

log = logging.getLogger(__name__)


class Previewer:
    def __init__(self, settings: PreviewSettings, tokenizer: Any, path: Path) -> None:
        self.settings = settings
        self.tokenizer = tokenizer
        self.path = path
        self.spent = 0.0

    def ahead(self, train_seconds: float) -> bool:
        """Previews, and the monitor's asks that share their budget, took more than theirs of training time."""
        return self.spent > self.settings.budget * train_seconds

    def due(self, step: int) -> bool:
        every = self.settings.every_steps
        return bool(every) and step % every == 0

    def run(self, model: torch.nn.Module, examples: list[tuple[list[int], list[int]]], step: int,
            train_seconds: float) -> dict[str, Any] | None:
        if not examples:
            return None
        if self.ahead(train_seconds):
            log.info("preview at step %d skipped: previews are ahead of their %.0f%% budget", step,
                     100 * self.settings.budget)
            return None
        started = time.monotonic()
        deadline = started + self.settings.seconds
        device = next(model.parameters()).device
        items = []
        model.eval()
        try:
            with torch.no_grad(), memory.phase(memory.EVAL):
                for prompt, expected in examples:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    answer = self._answer(model, torch.tensor([prompt], device=device), left, step)
                    if answer is None:
                        break
                    wanted = self._text(expected)
                    items.append({"prompt": self._text(prompt[-200:]), "expected": wanted, "answer": answer,
                                  "exact": answer == wanted})
        finally:
            model.train()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        seconds = time.monotonic() - started
        self.spent += seconds
        record = {"step": step, "time": time.time(), "seconds": round(seconds, 3), "items": items,
                  "exact_match": sum(i["exact"] for i in items) / len(items) if items else None}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return record

    def _answer(self, model: torch.nn.Module, ids: torch.Tensor, seconds: float, step: int) -> str | None:
        """The greedy answer to one prompt; None when it runs out of memory (the round ends there)."""
        try:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_time=seconds, max_new_tokens=self.settings.max_new_tokens,
                                 pad_token_id=self.tokenizer.pad_token_id)
            return self._text(out[0, ids.shape[1]:].tolist())
        except Exception as exc:
            if not memory.is_out_of_memory(exc):
                raise
            error = str(exc).splitlines()[0][:200]
        memory.free()
        log.warning("preview at step %d cut short: out of memory (%s)", step, error)
        return None

    def _text(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

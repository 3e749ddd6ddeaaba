"""A conversation with the model: an optional system prompt and the turns so far.

What the model reads is the conversation rendered exactly as training renders a prompt
(`data.masking.render_prompt`): the tokenizer's chat template, or the plain fallback for a
model without one. Without a system prompt the template's own default applies, as it did
for every training example that had none.
"""

from __future__ import annotations

from typing import Any

from finetuned.data.masking import prompt_ids, render_prompt


class Conversation:
    def __init__(self, tokenizer: Any, system: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.system = system
        self.turns: list[dict[str, str]] = []
        self.forgotten = 0  # exchanges dropped from the start so the prompt fits the model

    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system is not None else []
        return head + self.turns

    def ask(self, text: str) -> None:
        self.turns.append({"role": "user", "content": text})

    def answered(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        """Forget the turns; the system prompt stays."""
        self.turns, self.forgotten = [], 0

    def prompt(self) -> str:
        return render_prompt(self.tokenizer, self.messages())

    def prompt_ids(self, room: int | None = None) -> list[int]:
        """What the model reads next; with `room`, the oldest exchanges are dropped until it fits (the
        last question always stays)."""
        ids = prompt_ids(self.tokenizer, self.messages())
        while room is not None and len(ids) > room and len(self.turns) > 2:
            del self.turns[:2]
            self.forgotten += 1
            ids = prompt_ids(self.tokenizer, self.messages())
        return ids

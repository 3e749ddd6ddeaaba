"""The terminal's side of `finetuned chat`: a message in, the answer streamed out, turn after turn.

At a terminal it prompts (`you> `), streams each answer as it is generated, and takes
`/reset` (forget the conversation, keep the system prompt) and `/exit`; Ctrl+C stops an
answer, Ctrl+D or Ctrl+C at the prompt ends. With stdin piped, each line is one user
message and each answer is written to stdout followed by a newline (with `--json`, one
JSON object per answer), with no prompts and no colours; notes go to stderr, so stdout
holds the answers alone.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TextIO

import torch
from rich.console import Console

from finetuned.chat.conversation import Conversation
from finetuned.chat.generate import Sampling, stream

RESET, EXIT = "/reset", ("/exit", "/quit")


@dataclass(frozen=True)
class Options:
    max_new_tokens: int
    sampling: Sampling
    show_prompt: bool = False  # write the rendered prompt before each answer (to the notes)
    json: bool = False  # one JSON object per answer instead of its text
    room: int | None = None  # the tokens a prompt may take: the model's context less max_new_tokens


class Terminal:
    def __init__(self, model: torch.nn.Module, tokenizer: Any, conversation: Conversation, options: Options,
                 source: str, out: TextIO, notes: Console, interactive: bool) -> None:
        self.model, self.tokenizer, self.conversation, self.options = model, tokenizer, conversation, options
        self.source = source  # what answers, as the header says it
        self.out, self.notes, self.interactive = out, notes, interactive

    def run(self, lines: Iterator[str]) -> None:
        for line in lines:
            text = line.rstrip("\r\n")
            command = text.strip().lower()
            if command in EXIT:
                return
            if command == RESET:
                self.conversation.reset()
                self.notes.print("(the conversation starts again)", style="dim")
            elif text.strip():
                self.exchange(text)

    def prompts(self, stdin: TextIO) -> Iterator[str]:
        """Lines as a person types them at a terminal, or as a pipe gives them."""
        if not self.interactive:
            yield from stdin
            return
        while True:
            try:
                yield self.notes.input("[bold cyan]you[/]> ")
            except (EOFError, KeyboardInterrupt):
                self.notes.print()
                return

    def exchange(self, text: str) -> None:
        conversation, options = self.conversation, self.options
        conversation.ask(text)
        forgotten = conversation.forgotten
        ids = conversation.prompt_ids(options.room)
        if conversation.forgotten > forgotten:
            self.notes.print(f"(the oldest exchanges were dropped so the prompt fits in {options.room} tokens)",
                             style="dim")
        if options.show_prompt:
            self.notes.print(conversation.prompt(), style="dim", markup=False, highlight=False)
        stop = threading.Event()
        pieces: list[str] = []
        try:
            for piece in stream(self.model, self.tokenizer, ids, options.max_new_tokens, options.sampling, stop):
                pieces.append(piece)
                if not options.json:
                    self.out.write(piece)
                    self.out.flush()
        except KeyboardInterrupt:
            if not self.interactive:
                raise
            stop.set()
            conversation.turns.pop()  # a stopped answer is not part of the conversation
            self.out.write("\n")
            self.notes.print("(stopped)", style="dim")
            return
        answer = "".join(pieces)
        conversation.answered(answer)
        if options.json:
            self.out.write(json.dumps({"prompt": text, "answer": answer, "source": self.source},
                                      ensure_ascii=False) + "\n")
        else:
            self.out.write("\n")
        self.out.flush()

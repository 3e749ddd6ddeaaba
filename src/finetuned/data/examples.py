"""A file's good records as training examples: one rendered sequence each, or two for preference data.

    sft          one sequence: the conversation (or text) with its trained spans
    preference   two: prompt + chosen, prompt + rejected (only the answers train)
    unpaired     two: prompt + the answer judged good or bad, and the same prompt with the *next* example's
                 answer (the last with the first's), whose log-probabilities estimate KTO's KL term

The second sequence of an unpaired example is fixed by the file's order, not by how batches are
drawn, so its reference log-probabilities can be computed once, before training.

Rendering is Python and holds the GIL; encoding is Rust and releases it, so `ahead` runs the
rendering in a thread one batch ahead of the encoder.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from finetuned.config import DataSettings
from finetuned.data.chat import Chat, Message, with_system_prompt
from finetuned.data.formats import LABELLED, PAIRS, parse_record
from finetuned.data.masking import ChatRenderer, Span
from finetuned.data.preferences import Labelled, Pair
from finetuned.data.reader import FileReader
from finetuned.data.report import ProblemLog, RecordProblem
from finetuned.data.validate import Validation

SFT, PREFERENCE, UNPAIRED = "sft", PAIRS, LABELLED
# Examples per tokenizer call: large enough to amortise each call's overhead (and
# let the Rust side spread it over cores), small enough that a batch stays a few MB.
BATCH = 2048

Sequence = tuple[str, list[Span]]


@dataclass(frozen=True, slots=True)
class Example:
    sequences: tuple[Sequence, ...]  # rendered text and trained character spans, one or two
    desirable: bool | None = None  # unpaired data: the answer's label


def form_of(fmt: str | None) -> str:
    return fmt if fmt in (PREFERENCE, UNPAIRED) else SFT


def sequences_per_example(form: str) -> int:
    return 1 if form == SFT else 2


def rendered_examples(
    reader: FileReader, validation: Validation, renderer: ChatRenderer, settings: DataSettings, problems: ProblemLog,
) -> Iterator[list[Example]]:
    """The file's good records as examples, BATCH at a time; bad ones go to `problems`."""
    render = Renderer(renderer, settings.system_prompt)
    pending: list[Example] = []
    first: Labelled | None = None  # unpaired: the first answer closes the circle of KL pairs
    held: Labelled | None = None  # unpaired: waits for the next example's answer
    for item in reader:
        if item.problem is not None:
            problems.add(item.problem.kind, item.problem.message, item.line)
            continue
        try:
            fmt, payload = parse_record(item.value)
            if fmt != validation.format:
                raise RecordProblem("mixed_formats", f"a {fmt} record in a {validation.format} file")
            if isinstance(payload, Labelled):
                if held is not None:
                    pending.append(render.labelled(held, payload.completion))
                first, held = first or payload, payload
            else:
                pending.append(render.example(payload))
        except RecordProblem as problem:
            problems.add(problem.kind, f"line {item.line}: {problem.message}", item.line)
            continue
        if len(pending) >= BATCH:
            yield pending
            pending = []
    if held is not None and first is not None:
        pending.append(render.labelled(held, first.completion))
    if pending:
        yield pending


class Renderer:
    """Records as examples, rendered with one tokenizer's template and policy."""

    def __init__(self, renderer: ChatRenderer, system_prompt: str | None) -> None:
        self.renderer = renderer
        self.system_prompt = system_prompt

    def example(self, payload: Any) -> Example:
        if isinstance(payload, str):
            return Example((self.renderer.render_text(payload),))
        if isinstance(payload, Pair):
            prompt = payload.prompt
            return Example((self._answer(prompt, payload.chosen), self._answer(prompt, payload.rejected)))
        return Example((self.renderer.render_chat(with_system_prompt(payload, self.system_prompt)),))

    def labelled(self, example: Labelled, other_answer: tuple[Message, ...]) -> Example:
        return Example((self._answer(example.prompt, example.completion), self._answer(example.prompt, other_answer)),
                       desirable=example.desirable)

    def _answer(self, prompt: Chat, answer: tuple[Message, ...]) -> Sequence:
        """The prompt, none of it trained, followed by an answer that trains as an SFT answer would."""
        quiet = tuple(Message(m.role, m.content, False, m.tool_calls, m.name, m.tool_call_id) for m in prompt.messages)
        chat = with_system_prompt(Chat((*quiet, *answer), prompt.tools), self.system_prompt)
        return self.renderer.render_chat(chat)


def ahead(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run `items` in a thread, `depth` items ahead of the consumer (1.15x on two cores)."""
    done = object()
    buffer: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry: tuple[Any, BaseException | None]) -> bool:
        while not stop.is_set():
            try:
                buffer.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((done, None))
        except BaseException as exc:  # raised again on the consumer's side
            put((done, exc))
        finally:
            close = getattr(items, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name="render", daemon=True)
    thread.start()
    try:
        while True:
            item, error = buffer.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


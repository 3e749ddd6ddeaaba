"""Where the trained parts of a conversation with tools lie in its rendering.

The fast path of masking.py renders each sequence of roles once with placeholder
contents; a conversation with tools cannot share that skeleton (the calls and the
tool list are part of the text, and templates branch on them). So each such
record is its own skeleton: rendered once with placeholders for every non-empty
content (empty ones stay empty, so templates take the same branches), filled back
and compared with the real rendering. A trained turn then runs from its content
(or, for a turn that only calls tools, from the end of its assistant header) to
the template's end-of-turn marker, found once per template by `turn_marks`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from finetuned.data.report import RecordProblem

Span = tuple[int, int]
Apply = Callable[..., str]  # apply(messages, generation_prompt=False, tools=None) -> text

# Names no real tool has, ASCII so every template's JSON filter keeps them as they are.
_PROBE_TOOL, _PROBE_CALL, _PROBE_RESULT = "finetuned_probe_tool_4c1d", "finetuned_probe_call_9e2b", "probe_result_7a3f"


def sentinel(i: int) -> str:
    # Private-use characters: no template transforms them, no real content holds them.
    return f"\ue000{i}\ue001"


def common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


@dataclass(frozen=True)
class TurnMarks:
    end: str  # what closes an assistant turn (`<|im_end|>`), trained with it; "" when the template has none
    header: str  # what opens one: the generation prompt (`<|im_start|>assistant\\n`)


def turn_marks(apply: Apply) -> TurnMarks:
    """The template's end-of-turn marker and assistant header, from three small renderings."""
    mark = sentinel(0)
    user, other = {"role": "user", "content": "x"}, {"role": "user", "content": "y"}
    answer = {"role": "assistant", "content": mark}
    try:
        last = apply([user, answer]).split(mark, 1)[1]
        more = apply([user, answer, other]).split(mark, 1)[1]
        bare, prompt = apply([user]), apply([user], True)
    except Exception:  # a template that refuses the probe: tool records say so when they meet it
        return TurnMarks("", "")
    # After an answer, what follows when it is the last turn and when more comes: their common start.
    end = common_prefix(last, more).strip()
    return TurnMarks(end, prompt[len(bare):] if prompt.startswith(bare) else "")


def template_tool_support(apply: Apply) -> tuple[bool, bool]:
    """(renders tools and calls, renders tool results): a probe with names found nowhere else."""
    tools = [{"type": "function", "function": {"name": _PROBE_TOOL, "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    call = {"type": "function", "function": {"name": _PROBE_CALL, "arguments": {"q": 1}}}
    messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "", "tool_calls": [call]},
                {"role": "tool", "content": _PROBE_RESULT}, {"role": "assistant", "content": "y"}]
    try:
        with_tools = apply(messages, tools=tools)
    except Exception:
        with_tools = ""
    try:
        results = apply([messages[0], {"role": "assistant", "content": "z"}, messages[2], messages[3]])
    except Exception:
        results = ""
    return _PROBE_TOOL in with_tools and _PROBE_CALL in with_tools, _PROBE_RESULT in results


def tool_chat_spans(apply: Apply, dicts: list[dict[str, Any]], tools: list[dict[str, Any]] | None, text: str,
                    trained: Sequence[int], marks: TurnMarks) -> list[Span]:
    """Trained character spans of one rendered conversation with tools (see the module's docstring)."""
    marked = [dict(d, content=sentinel(i)) if d["content"] else d for i, d in enumerate(dicts)]
    try:
        full = apply(marked, tools=tools)
    except Exception:
        full = ""
    bounds = _content_bounds(full, dicts, text)  # turn index -> (start, end) of its content in `text`
    spans: list[Span] = []
    cursor = 0  # everything before it belongs to earlier turns
    for i, d in enumerate(dicts):
        if i in bounds:
            start, end = bounds[i]
        else:  # a turn that only calls tools: its text starts after the next assistant header
            at = text.find(marks.header, cursor) if marks.header else -1
            if at < 0:
                raise _unlocatable()
            start = end = at + len(marks.header)
        if i in trained:
            if d["role"] == "assistant":
                end = _end_of_turn(text, end, marks)
            if end > start:
                spans.append((start, end))
        cursor = max(cursor, end)
    return spans


def _content_bounds(full: str, dicts: list[dict[str, Any]], text: str) -> dict[int, Span]:
    bounds, pieces, pos, real = {}, [], 0, 0
    for i, d in enumerate(dicts):
        if not d["content"]:
            continue
        mark = sentinel(i)
        at = full.find(mark, pos)
        if at < 0 or full.count(mark) != 1:
            raise _unlocatable()  # the template drops or repeats content
        pieces += (full[pos:at], d["content"])
        real += at - pos
        bounds[i] = (real, real + len(d["content"]))
        real += len(d["content"])
        pos = at + len(mark)
    pieces.append(full[pos:])
    if "".join(pieces) != text:
        raise _unlocatable()  # the template rewrites content: its answers cannot be located exactly
    return bounds


def _end_of_turn(text: str, after: int, marks: TurnMarks) -> int:
    at = text.find(marks.end, after) if marks.end else -1
    if at < 0:
        raise _unlocatable()
    return at + len(marks.end)


def _unlocatable() -> RecordProblem:
    return RecordProblem("template_error", "the chat template renders this conversation with tools in a way whose "
                         "answers cannot be located for the loss mask")

"""The record formats (SPEC section 7), turned into one currency.

Chat-like formats become a `Chat` (chat.py); `text` stays a string; preference data
becomes a `Pair` or a `Labelled` answer (preferences.py). This module tells a record's
format and parses the simple ones; conversations.py, preferences.py and tools.py parse
the rest. The validator, the tokeniser and `finetuned check` all go through
`parse_record`, so they can never disagree about which lines are good.

A key that changes what a record means is never dropped in silence: a record
holding one that training would not honour (images, audio, video) is refused
with the key's name and what would take it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from finetuned.data.chat import Chat, Message, alpaca_prompt, string
from finetuned.data.conversations import parse_messages, parse_sharegpt
from finetuned.data.preferences import (
    LABELLED,
    PAIRS,
    answer_turns,
    parse_labelled,
    parse_pair,
    preference_form,
    prompt_chat,
)
from finetuned.data.report import RecordProblem, kind_of, listed

CHAT, SHAREGPT, ALPACA, COMPLETION, TEXT = "chat", "sharegpt", "alpaca", "completion", "text"
FORMATS = (CHAT, SHAREGPT, ALPACA, COMPLETION, TEXT, PAIRS, LABELLED)

Payload = Any  # Chat | str | Pair | Labelled (preferences.py)


@dataclass
class Notes:
    """What a record holds that training uses differently than it might seem: warned about, not refused."""

    unused_keys: set[str] = field(default_factory=set)
    placeholders: set[str] = field(default_factory=set)


# Keys that change what a record means, with what they would need. A record holding one (non-empty)
# is refused: training it as plain supervised data would teach the wrong thing.
_REFUSED = (
    (("images", "videos", "audios"), "media",
     "images, audio and video are not trained: finetuned trains text models; drop the column "
     "(and the <image> placeholders) to train the text alone"),
)

# The key that names each format, checked in this order (a record with both
# `messages` and `text` is chat: the richer structure wins).
_SIGNATURES = (
    ("messages", CHAT),
    ("conversations", SHAREGPT),
    ("instruction", ALPACA),
    ("prompt", COMPLETION),
    ("completion", COMPLETION),
    ("text", TEXT),
)
# What each format reads; anything else is reported as unused (not refused: ids, sources, categories).
_KNOWN_KEYS = {
    CHAT: {"messages", "tools", "functions", "parallel_tool_calls", "system"},
    SHAREGPT: {"conversations", "tools", "system"},
    ALPACA: {"instruction", "input", "output", "system", "history"},
    COMPLETION: {"prompt", "completion", "system", "tools", "functions"},
    TEXT: {"text"},
    PAIRS: {"prompt", "question", "chosen", "rejected", "conversations", "messages", "instruction", "input", "system",
            "history", "tools", "functions", "preferred_output", "non_preferred_output"},
    LABELLED: {"prompt", "completion", "label", "kto_tag", "messages", "conversations", "system", "tools", "functions"},
}
# LLaMA-Factory's identity data ships "{{name}}" for the user to replace: trained as is, the model learns it.
PLACEHOLDER = re.compile(r"\{\{\s*[A-Za-z_][\w.]*\s*\}\}")


def detect_format(record: dict[str, Any]) -> str | None:
    form = preference_form(record)
    if form is not None:
        return form
    for key, name in _SIGNATURES:
        if key in record:
            return name
    return None


def parse_record(record: Any, notes: Notes | None = None) -> tuple[str, Payload]:
    """(format, Chat or text) of one parsed JSON value, or RecordProblem saying why not.

    `notes`, when given, collects what is used differently than it might seem (unused keys, placeholders).
    """
    if isinstance(record, list):
        raise RecordProblem("array_line", "the line holds a JSON array; one JSON object per line is expected")
    if not isinstance(record, dict):
        raise RecordProblem("not_object", f"expected a JSON object, got {kind_of(record)}")
    _refuse_meaning_changes(record)
    _refuse_known_misshapes(record)
    name = detect_format(record)
    if name is None:
        keys = listed(sorted(record)) or "none"
        raise RecordProblem(
            "unknown_schema",
            f"keys ({keys}) match no known format: messages, conversations, "
            "instruction/output, prompt/completion, text",
        )
    payload = _parse(name, record)
    if notes is not None:
        notes.unused_keys.update(set(record) - _KNOWN_KEYS[name])
        notes.placeholders.update(m.group() for text in _texts(payload) for m in PLACEHOLDER.finditer(text))
    return name, payload


def _parse(name: str, record: dict[str, Any]) -> Payload:
    if name == PAIRS:
        return parse_pair(record)
    if name == LABELLED:
        return parse_labelled(record)
    if name == CHAT:
        return parse_messages(record)
    if name == SHAREGPT:
        return parse_sharegpt(record)
    if name == ALPACA:
        return _alpaca(record)
    if name == COMPLETION:
        return _completion(record)
    return _text(record)


def _refuse_meaning_changes(record: dict[str, Any]) -> None:
    for keys, kind, why in _REFUSED:
        present = [k for k in keys if k in record and record[k] not in (None, [], "", {})]
        if present:
            raise RecordProblem(kind, f"'{present[0]}': {why}")


def _refuse_known_misshapes(record: dict[str, Any]) -> None:
    """Shapes that would pass for another format, or for none, refused with what they are and the fix."""
    answers = record.get("answers")
    if isinstance(answers, list) and answers and all(isinstance(a, dict) and "rank" in a for a in answers):
        raise RecordProblem("ranking", "'answers' holds ranked answers (a 'rank' each, as Nectar writes them): "
                            "finetuned trains pairs, not rankings; write each record as {\"prompt\", \"chosen\": "
                            "a better answer, \"rejected\": a worse one}")
    if not record or not all(isinstance(v, dict) and v for v in record.values()):
        return
    fix = 'write the records instead: df.to_json(path, orient="records", lines=True)'
    if all(k.isdigit() for v in record.values() for k in v):
        raise RecordProblem("pandas_layout", f"the object holds columns ({listed(sorted(record))}), each mapping "
                            f"row numbers to values, as pandas' DataFrame.to_json() writes by default: {fix}")
    if all(k.isdigit() for k in record):
        raise RecordProblem("pandas_layout", "the object holds rows keyed by their number, as pandas' "
                            f"DataFrame.to_json(orient=\"index\") writes: {fix}")


def _texts(payload: Payload) -> Iterator[str]:
    if isinstance(payload, str):
        yield payload
        return
    chats = [payload] if isinstance(payload, Chat) else [payload.prompt]
    for chat in chats:
        for message in chat.messages:
            yield message.content
    for key in ("chosen", "rejected", "completion"):
        for message in getattr(payload, key, ()):
            yield message.content


def require(record: dict[str, Any], key: str, fmt: str) -> Any:
    if key not in record:
        article = "an" if fmt[0] in "aeiou" else "a"
        raise RecordProblem("missing_field", f"{article} {fmt} record needs '{key}'")
    return record[key]


def _alpaca(record: dict[str, Any]) -> Chat:
    instruction = string(record["instruction"], "instruction")
    output = string(require(record, "output", ALPACA), "output")
    input_text = record.get("input")
    input_text = "" if input_text is None else string(input_text, "input")
    messages = []
    if record.get("system") is not None:
        messages.append(Message("system", string(record["system"], "system")))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordProblem("bad_structure", f"history is {kind_of(history)}, expected [[question, answer], ...]")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RecordProblem("bad_structure", f"history[{i}] must be [question, answer]")
        messages.append(Message("user", string(pair[0], f"history[{i}][0]")))
        messages.append(Message("assistant", string(pair[1], f"history[{i}][1]")))
    messages.append(Message("user", alpaca_prompt(instruction, input_text)))
    messages.append(Message("assistant", output))
    return Chat(tuple(messages))


def _completion(record: dict[str, Any]) -> Chat:
    """Strings, or TRL's conversational form (message lists): the prompt is context, the completion trains."""
    require(record, "prompt", COMPLETION)
    answer = answer_turns(require(record, "completion", COMPLETION), "completion")
    context = prompt_chat(record)
    # TRL trains the completion only: an assistant turn inside the prompt is context, whatever it says.
    return Chat((*(replace(m, train=False) for m in context.messages), *answer), context.tools)


def _text(record: dict[str, Any]) -> str:
    text = string(record["text"], "text")
    if not text:
        raise RecordProblem("bad_content", "text is an empty string")
    return text

"""The record formats (SPEC section 7), turned into one currency.

Chat-like formats become a list of `Message(role, content)`; `text` stays a
string. This is the only module that knows what a record looks like: the
validator and the tokeniser both go through `parse_record`, so they can never
disagree about which lines are good.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuned.data.report import RecordProblem

CHAT, SHAREGPT, ALPACA, COMPLETION, TEXT = "chat", "sharegpt", "alpaca", "completion", "text"
FORMATS = (CHAT, SHAREGPT, ALPACA, COMPLETION, TEXT)
ROLES = ("system", "user", "assistant", "tool")

# ShareGPT dumps name speakers many ways; LLaMA-Factory adds observation/function_call for tools.
SHAREGPT_ROLES = {
    "system": "system",
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "model": "assistant",
    "function_call": "assistant",
    "tool": "tool",
    "observation": "tool",
    "function": "tool",
}

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


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


Payload = list[Message] | str


def detect_format(record: dict[str, Any]) -> str | None:
    for key, name in _SIGNATURES:
        if key in record:
            return name
    return None


def parse_record(record: Any) -> tuple[str, Payload]:
    """(format, messages or text) of one parsed JSON value, or RecordProblem saying why not."""
    if isinstance(record, list):
        raise RecordProblem("array_line", "the line holds a JSON array; one JSON object per line is expected")
    if not isinstance(record, dict):
        raise RecordProblem("not_object", f"expected a JSON object, got {_kind(record)}")
    name = detect_format(record)
    if name is None:
        keys = ", ".join(sorted(record)[:8]) or "none"
        raise RecordProblem(
            "unknown_schema",
            f"keys ({keys}) match no known format: messages, conversations, "
            "instruction/output, prompt/completion, text",
        )
    return name, _PARSERS[name](record)


_KINDS = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "an array", dict: "an object"}


def _kind(value: Any) -> str:
    return "null" if value is None else _KINDS.get(type(value), type(value).__name__)


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordProblem("bad_content", f"{where} is {_kind(value)}, expected a string")
    return value


def _require(record: dict[str, Any], key: str, fmt: str) -> Any:
    if key not in record:
        raise RecordProblem("missing_field", f"a {fmt} record needs '{key}'")
    return record[key]


def _turns(record: dict[str, Any], key: str, fmt: str) -> list[Any]:
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        what = "an empty array" if isinstance(turns, list) else _kind(turns)
        raise RecordProblem("bad_structure", f"'{key}' is {what}, expected a non-empty array of turns")
    return turns


def _need_assistant(messages: list[Message], key: str) -> list[Message]:
    if not any(m.role == "assistant" for m in messages):
        raise RecordProblem("no_assistant", f"'{key}' has no assistant turn, so nothing would be learned")
    return messages


def _chat(record: dict[str, Any]) -> list[Message]:
    messages = []
    for i, turn in enumerate(_turns(record, "messages", CHAT)):
        if not isinstance(turn, dict):
            raise RecordProblem("bad_structure", f"messages[{i}] is {_kind(turn)}, expected an object")
        if "role" not in turn or "content" not in turn:
            raise RecordProblem("bad_structure", f"messages[{i}] needs 'role' and 'content'")
        role = turn["role"]
        if role not in ROLES:
            raise RecordProblem("bad_role", f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
        messages.append(Message(role, _string(turn["content"], f"messages[{i}].content")))
    return _need_assistant(messages, "messages")


def _sharegpt(record: dict[str, Any]) -> list[Message]:
    messages = []
    if "system" in record:  # LLaMA-Factory keeps the system prompt beside the turns
        messages.append(Message("system", _string(record["system"], "system")))
    for i, turn in enumerate(_turns(record, "conversations", SHAREGPT)):
        if not isinstance(turn, dict):
            raise RecordProblem("bad_structure", f"conversations[{i}] is {_kind(turn)}, expected an object")
        if "from" not in turn or "value" not in turn:
            raise RecordProblem("bad_structure", f"conversations[{i}] needs 'from' and 'value'")
        role = SHAREGPT_ROLES.get(turn["from"]) if isinstance(turn["from"], str) else None
        if role is None:
            raise RecordProblem(
                "bad_role",
                f"conversations[{i}].from is {turn['from']!r}; expected one of {', '.join(SHAREGPT_ROLES)}",
            )
        messages.append(Message(role, _string(turn["value"], f"conversations[{i}].value")))
    return _need_assistant(messages, "conversations")


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The user turn of an alpaca record: the instruction, then its input after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def _alpaca(record: dict[str, Any]) -> list[Message]:
    instruction = _string(record["instruction"], "instruction")
    output = _string(_require(record, "output", ALPACA), "output")
    input_text = record.get("input")
    input_text = "" if input_text is None else _string(input_text, "input")
    messages = []
    if record.get("system") is not None:
        messages.append(Message("system", _string(record["system"], "system")))
    history = record.get("history") or []
    if not isinstance(history, list):
        raise RecordProblem("bad_structure", f"history is {_kind(history)}, expected [[question, answer], ...]")
    for i, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RecordProblem("bad_structure", f"history[{i}] must be [question, answer]")
        messages.append(Message("user", _string(pair[0], f"history[{i}][0]")))
        messages.append(Message("assistant", _string(pair[1], f"history[{i}][1]")))
    messages.append(Message("user", alpaca_prompt(instruction, input_text)))
    messages.append(Message("assistant", output))
    return messages


def _completion(record: dict[str, Any]) -> list[Message]:
    prompt = _string(_require(record, "prompt", COMPLETION), "prompt")
    completion = _string(_require(record, "completion", COMPLETION), "completion")
    return [Message("user", prompt), Message("assistant", completion)]


def _text(record: dict[str, Any]) -> str:
    text = _string(record["text"], "text")
    if not text:
        raise RecordProblem("bad_content", "text is an empty string")
    return text


_PARSERS = {CHAT: _chat, SHAREGPT: _sharegpt, ALPACA: _alpaca, COMPLETION: _completion, TEXT: _text}


def with_system_prompt(messages: list[Message], system_prompt: str | None) -> list[Message]:
    """Replace the conversation's leading system message with `system_prompt`, or add one."""
    if system_prompt is None:
        return messages
    rest = messages[1:] if messages and messages[0].role == "system" else messages
    return [Message("system", system_prompt), *rest]

"""Conversations as people write them: OpenAI/TRL `messages` and ShareGPT `conversations`.

What each shape says about a turn is kept, not dropped:
- tools: a top-level `tools` list (or LLaMA-Factory's JSON string of it), legacy `functions`;
- calls: assistant `tool_calls` (content null, "" or absent), legacy `function_call`, LLaMA-Factory
  `function_call` turns and v1 `tool_call` parts; results: `tool` turns (`tool_call_id`, `name`),
  legacy `function` turns, LLaMA-Factory `observation` turns;
- per-turn loss: OpenAI `weight` (0/1), Axolotl `train` (true/false), LLaMA-Factory v1 `loss_weight` (0/1);
- content as typed parts (`[{"type": "text", "text" | "value": ...}]`), joined.
What cannot be honoured is refused naming it: a non-text part, a fractional loss weight.
"""

from __future__ import annotations

from typing import Any

from finetuned.data.chat import Chat, Message, ToolCall, need_assistant, string
from finetuned.data.report import RecordProblem, kind_of
from finetuned.data.tools import parse_arguments, parse_tools, tool_call_from_json

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
# Per-turn loss keys, as each tool writes them.
_TRAIN_KEYS = ("weight", "train", "loss_weight")


def parse_messages(record: dict[str, Any], need_answer: bool = True) -> Chat:
    tools = parse_tools(record.get("tools"), "tools") + parse_tools(record.get("functions"), "functions")
    messages = []
    if "system" in record and record["system"] is not None:  # beside the turns, as LLaMA-Factory keeps it
        messages.append(Message("system", string(record["system"], "system")))
    for i, turn in enumerate(_turns(record, "messages")):
        where = f"messages[{i}]"
        if not isinstance(turn, dict):
            raise RecordProblem("bad_structure", f"{where} is {kind_of(turn)}, expected an object")
        if "role" not in turn:
            raise RecordProblem("bad_structure", f"{where} needs 'role'")
        role = turn["role"]
        if role == "function":  # OpenAI's legacy name for a tool result
            role = "tool"
        if role not in ROLES:
            raise RecordProblem("bad_role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
        calls = _calls(turn, where) if role == "assistant" else ()
        content = turn.get("content")
        if content is None and not calls:
            what = "needs 'content'" if "content" not in turn else "has null content"
            raise RecordProblem("bad_structure", f"{where} {what} (only an assistant turn with tool calls may not)")
        messages.append(Message(
            role, _content(content, f"{where}.content", calls), _train(turn, where), calls,
            name=_optional_string(turn.get("name"), f"{where}.name"),
            tool_call_id=_optional_string(turn.get("tool_call_id"), f"{where}.tool_call_id"),
        ))
        _no_other_meaning(turn, where)
    chat = Chat(tuple(messages), tools)
    return need_assistant(chat, "messages") if need_answer else chat


def parse_sharegpt(record: dict[str, Any], need_answer: bool = True) -> Chat:
    tools = parse_tools(record.get("tools"), "tools")
    messages = []
    if record.get("system") is not None:  # LLaMA-Factory keeps the system prompt beside the turns
        messages.append(Message("system", string(record["system"], "system")))
    for i, turn in enumerate(_turns(record, "conversations")):
        where = f"conversations[{i}]"
        if not isinstance(turn, dict):
            raise RecordProblem("bad_structure", f"{where} is {kind_of(turn)}, expected an object")
        if "from" not in turn or "value" not in turn:
            raise RecordProblem("bad_structure", f"{where} needs 'from' and 'value'")
        speaker = turn["from"]
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RecordProblem(
                "bad_role", f"{where}.from is {speaker!r}; expected one of {', '.join(SHAREGPT_ROLES)}")
        if speaker == "function_call":  # the value is the call itself: {"name", "arguments"} or a list of them
            calls = tool_call_from_json(string(turn["value"], f"{where}.value"), f"{where}.value")
            messages.append(Message("assistant", "", _train(turn, where), calls))
        else:
            messages.append(Message(role, _content(turn["value"], f"{where}.value", ()), _train(turn, where)))
    chat = Chat(tuple(messages), tools)
    return need_assistant(chat, "conversations") if need_answer else chat


def _turns(record: dict[str, Any], key: str) -> list[Any]:
    turns = record[key]
    if not isinstance(turns, list) or not turns:
        what = "an empty array" if isinstance(turns, list) else kind_of(turns)
        raise RecordProblem("bad_structure", f"'{key}' is {what}, expected a non-empty array of turns")
    return turns


def _calls(turn: dict[str, Any], where: str) -> tuple[ToolCall, ...]:
    calls: list[ToolCall] = []
    raw = turn.get("tool_calls")
    if raw is not None:
        if not isinstance(raw, list):
            raise RecordProblem("bad_structure", f"{where}.tool_calls is {kind_of(raw)}, expected an array")
        for j, call in enumerate(raw):
            calls.append(_call(call, f"{where}.tool_calls[{j}]"))
    if turn.get("function_call") is not None:  # OpenAI's legacy single call
        calls.append(_call({"function": turn["function_call"]}, f"{where}.function_call"))
    content = turn.get("content")
    if isinstance(content, list):  # LLaMA-Factory v1: calls are parts of the content
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "tool_call":
                calls.extend(tool_call_from_json(string(_part_text(part, f"{where}.content[{j}]"),
                                                        f"{where}.content[{j}]"), f"{where}.content[{j}]"))
    return tuple(calls)


def _call(call: Any, where: str) -> ToolCall:
    if not isinstance(call, dict):
        raise RecordProblem("bad_tool_call", f"{where} is {kind_of(call)}, expected an object")
    function = call.get("function", call)
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise RecordProblem("bad_tool_call", f"{where} needs a function with a 'name'")
    call_id = call.get("id")
    return ToolCall(function["name"], parse_arguments(function.get("arguments", {})),
                    call_id if isinstance(call_id, str) else None)


def _content(content: Any, where: str, calls: tuple[ToolCall, ...]) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise RecordProblem("bad_content", f"{where} is {kind_of(content)}, expected a string or text parts")
    texts = []
    for j, part in enumerate(content):
        if not isinstance(part, dict):
            raise RecordProblem("bad_content", f"{where}[{j}] is {kind_of(part)}, expected a typed part")
        kind = part.get("type", "text")
        if kind == "tool_call":
            continue  # read by _calls
        if kind != "text":
            raise RecordProblem("unsupported_part", f"{where}[{j}] is a '{kind}' part: only text parts are "
                                "trained (and tool calls); drop it or move its text into a text part")
        if any(key in part for key in _TRAIN_KEYS):
            raise RecordProblem("unsupported_part", f"{where}[{j}] has its own loss flag: per-part flags are not "
                                "supported; split the turn instead")
        texts.append(string(_part_text(part, f"{where}[{j}]"), f"{where}[{j}]"))
    if not texts and not calls:
        raise RecordProblem("bad_content", f"{where} holds no text part")
    return "".join(texts)


def _part_text(part: dict[str, Any], where: str) -> Any:
    for key in ("text", "value", "content"):  # OpenAI, LLaMA-Factory v1, and the odd export
        if key in part:
            return part[key]
    raise RecordProblem("bad_content", f"{where} needs 'text'")


def _train(turn: dict[str, Any], where: str) -> bool | None:
    """The turn's own say on its loss, from whichever per-turn key the data uses."""
    for key in _TRAIN_KEYS:
        if key not in turn or turn[key] is None:
            continue
        value = turn[key]
        if isinstance(value, bool):
            return value
        if isinstance(value, int | float) and value in (0, 1):
            return bool(value)
        raise RecordProblem("unsupported_weight", f"{where}.{key} is {value!r}: a turn trains (1) or not (0); "
                            "fractional loss weights are not supported")
    return None


def _optional_string(value: Any, where: str) -> str | None:
    return None if value is None else string(value, where)


def _no_other_meaning(turn: dict[str, Any], where: str) -> None:
    if turn.get("reasoning_content") or turn.get("reasoning"):
        raise RecordProblem("unsupported_part", f"{where} carries reasoning: reasoning is not trained yet; "
                            "put it in the content (e.g. <think>...</think>) or drop it")


"""Tools and tool calls: read from the shapes data comes in, rendered the way the model's template wants.

Chat templates that know tools (Qwen2.5/3, Llama 3.1+, Mistral...) take them as
`apply_chat_template(messages, tools=[...])` and calls as assistant `tool_calls`
with `arguments` as a dict; they render both in their own form (`<tool_call>`
for Qwen). A template that ignores them would train calls the model never saw
described, or empty answers: for those, `fallback` writes the tools into the
system turn and each call as a JSON line in the assistant turn (docs/data.md).
"""

from __future__ import annotations

import json
from typing import Any

from finetuned.data.chat import Chat, Message, ToolCall
from finetuned.data.report import RecordProblem, kind_of

RESULT_PREFIX = "Function result: "
FALLBACK_INTRO = ("You can call these functions. To call one, answer with a JSON object "
                  '{"name": ..., "arguments": {...}} on a line of its own:')


def parse_tools(raw: Any, where: str) -> tuple[dict[str, Any], ...]:
    """JSON schemas as templates take them, from a list or a JSON string of one; [] and "" mean none."""
    if raw is None or raw == "":
        return ()
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise RecordProblem("bad_tools", f"'{where}' is a string but not JSON: {exc}") from None
    if isinstance(raw, dict):
        raw = [raw]
    if not isinstance(raw, list):
        raise RecordProblem("bad_tools", f"'{where}' is {kind_of(raw)}, expected a list of function schemas")
    tools = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise RecordProblem("bad_tools", f"{where}[{i}] is {kind_of(tool)}, expected a function schema")
        # LLaMA-Factory and legacy `functions` keep bare schemas; templates expect them wrapped.
        function = tool.get("function", tool) if tool.get("type", "function") == "function" else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise RecordProblem("bad_tools", f"{where}[{i}] needs a function with a 'name'")
        tools.append({"type": "function", "function": function})
    return tuple(tools)


def parse_arguments(arguments: Any) -> Any:
    """A call's arguments as a dict when they are JSON (OpenAI sends a string), else as given."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except ValueError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return arguments


def tool_call_from_json(text: str, where: str) -> tuple[ToolCall, ...]:
    """LLaMA-Factory's call text: {"name", "arguments"} or a list of them."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise RecordProblem("bad_tool_call", f"{where} is not a JSON function call: {exc}") from None
    calls = value if isinstance(value, list) else [value]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise RecordProblem("bad_tool_call", f'{where} needs {{"name": ..., "arguments": {{...}}}}')
        out.append(ToolCall(call["name"], parse_arguments(call.get("arguments", {}))))
    return tuple(out)


def template_message(message: Message) -> dict[str, Any]:
    """One message as `apply_chat_template` takes it."""
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [_template_call(call) for call in message.tool_calls]
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _template_call(call: ToolCall) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if call.id is not None:
        out["id"] = call.id
    return out


def call_line(call: ToolCall) -> str:
    return json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)


def fallback(chat: Chat, tool_role: bool) -> Chat:
    """The conversation for a template that ignores tools: schemas in the system turn, calls as JSON lines,
    and results as user turns where the template has no tool role."""
    messages = list(chat.messages)
    if chat.tools:
        listing = "\n".join([FALLBACK_INTRO, *(json.dumps(t["function"], ensure_ascii=False) for t in chat.tools)])
        if messages and messages[0].role == "system":
            first = messages[0]
            messages[0] = Message("system", f"{first.content}\n\n{listing}" if first.content else listing,
                                  first.train)
        else:
            messages.insert(0, Message("system", listing))
    for i, m in enumerate(messages):
        if m.tool_calls:
            lines = [call_line(call) for call in m.tool_calls]
            content = "\n".join([m.content, *lines]) if m.content else "\n".join(lines)
            messages[i] = Message(m.role, content, m.train)
        elif m.role == "tool" and not tool_role:
            messages[i] = Message("user", f"{RESULT_PREFIX}{m.content}", m.train)
    return Chat(tuple(messages))

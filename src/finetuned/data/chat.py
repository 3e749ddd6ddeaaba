"""The currency every chat-like record becomes, and the rules its parsers share.

A `Chat` is messages (role, content, whether the turn trains, tool calls) and the tools the
conversation may call. formats.py, conversations.py, preferences.py and tools.py build them;
masking.py and examples.py render them. Nothing here knows a record's shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuned.data.report import RecordProblem, kind_of


@dataclass(frozen=True, slots=True)
class ToolCall:
    name: str
    arguments: Any  # a dict when the data's JSON parses (what chat templates expect), else the text as given
    id: str | None = None


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str
    train: bool | None = None  # the data's own say on this turn's loss; None: the policy (assistant turns train)
    tool_calls: tuple[ToolCall, ...] = ()
    name: str | None = None  # the function a tool result answers
    tool_call_id: str | None = None


@dataclass(frozen=True, slots=True)
class Chat:
    messages: tuple[Message, ...]
    tools: tuple[dict[str, Any], ...] = ()  # JSON schemas, each {"type": "function", "function": {...}}

    @property
    def calls_tools(self) -> bool:
        """Tools are offered or called: the template must render them (or the fallback must)."""
        return bool(self.tools) or any(m.tool_calls for m in self.messages)

    @property
    def structured(self) -> bool:
        """Parts beside role and content shape the rendering: no skeleton shared with other records."""
        return self.calls_tools or any(m.name is not None or m.tool_call_id is not None for m in self.messages)


def string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise RecordProblem("bad_content", f"{where} is {kind_of(value)}, expected a string")
    return value


def need_assistant(chat: Chat, key: str) -> Chat:
    if not any(m.role == "assistant" for m in chat.messages):
        raise RecordProblem("no_assistant", f"'{key}' has no assistant turn, so nothing would be learned")
    return chat


def alpaca_prompt(instruction: str, input_text: str) -> str:
    """The user turn of an alpaca record: the instruction, then its input after a blank line."""
    return f"{instruction}\n\n{input_text}" if input_text else instruction


def with_system_prompt(chat: Chat, system_prompt: str | None) -> Chat:
    """Replace the conversation's leading system message with `system_prompt`, or add one."""
    if system_prompt is None:
        return chat
    messages = chat.messages
    rest = messages[1:] if messages and messages[0].role == "system" else messages
    return Chat((Message("system", system_prompt), *rest), chat.tools)

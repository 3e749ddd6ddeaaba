"""Preference data, as TRL, LLaMA-Factory and OpenAI write it, turned into one currency.

Two forms, and the file's form picks the objective:
- pairs (`Pair`): a prompt, a chosen and a rejected answer. They train with `preference.objective`
  (DPO, ORPO or SimPO).
- labelled answers (`Labelled`): a prompt and one answer judged good or bad. They train with KTO.

Shapes read (docs/data.md, "Preference data"):
- TRL standard `{"prompt": str, "chosen": str, "rejected": str}` and its conversational form (lists of
  messages), and the implicit-prompt form where chosen and rejected are whole conversations (the prompt
  is their longest common start), also beside a string `prompt` that must agree with it (UltraFeedback);
- TRL unpaired `{"prompt", "completion", "label": bool}`;
- LLaMA-Factory ranking data: Alpaca with `chosen`/`rejected` strings, ShareGPT `conversations` with
  `chosen`/`rejected` turn objects (`dpo_en_demo.json`); KTO data: `messages` (or `conversations`) whose
  last assistant turn is judged by a boolean `label` (or `kto_tag`) (`kto_en_demo.json`);
- OpenAI preference fine-tuning `{"input": {"messages", "tools"}, "preferred_output", "non_preferred_output"}`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from finetuned.data.chat import Chat, Message, alpaca_prompt, string
from finetuned.data.conversations import parse_messages, parse_sharegpt
from finetuned.data.report import RecordProblem, kind_of
from finetuned.data.tools import parse_tools

PAIRS, LABELLED = "preference", "unpaired"
LABEL_KEYS = ("label", "kto_tag")


@dataclass(frozen=True, slots=True)
class Pair:
    prompt: Chat  # the conversation before the answers, with its tools
    chosen: tuple[Message, ...]
    rejected: tuple[Message, ...]


@dataclass(frozen=True, slots=True)
class Labelled:
    prompt: Chat
    completion: tuple[Message, ...]
    desirable: bool


def preference_form(record: dict[str, Any]) -> str | None:
    """PAIRS, LABELLED, or None for a record that is not preference data."""
    if "chosen" in record or "rejected" in record or "preferred_output" in record or "non_preferred_output" in record:
        return PAIRS
    if any(key in record for key in LABEL_KEYS):
        return LABELLED
    return None


def parse_pair(record: dict[str, Any]) -> Pair:
    if "preferred_output" in record or "non_preferred_output" in record:
        return _openai(record)
    for key in ("chosen", "rejected"):
        if key not in record:
            raise RecordProblem("missing_field", f"a preference record needs both 'chosen' and 'rejected' ('{key}' "
                                "is missing)")
    chosen, rejected = record["chosen"], record["rejected"]
    if "conversations" in record:  # LLaMA-Factory ShareGPT ranking: the answers are single turn objects
        prompt = _conversation({"conversations": record["conversations"], **_extra(record)}, "conversations")
        return _pair(prompt, _sharegpt_answer(chosen, "chosen"), _sharegpt_answer(rejected, "rejected"))
    if "instruction" in record:  # LLaMA-Factory Alpaca ranking
        prompt = _alpaca_prompt(record)
        return _pair(prompt, answer_turns(chosen, "chosen"), answer_turns(rejected, "rejected"))
    if "question" in record and "prompt" not in record:  # Intel/orca_dpo_pairs: `system`, `question`
        record = {**record, "prompt": record["question"]}
    if "prompt" in record:
        if isinstance(record["prompt"], str) and _whole_conversation(chosen):
            # UltraFeedback: the answers repeat the prompt as their first turn; TRL ignores `prompt` then.
            return _implicit(record, stated=record["prompt"])
        return _pair(prompt_chat(record), answer_turns(chosen, "chosen"), answer_turns(rejected, "rejected"))
    if "messages" in record:  # the conversation so far, beside the answers
        prompt = _conversation({"messages": record["messages"], **_extra(record)}, "messages")
        return _pair(prompt, answer_turns(chosen, "chosen"), answer_turns(rejected, "rejected"))
    return _implicit(record)


def parse_labelled(record: dict[str, Any]) -> Labelled:
    key = next(k for k in LABEL_KEYS if k in record)
    label = record[key]
    if not isinstance(label, bool):
        raise RecordProblem("bad_label", f"'{key}' is {kind_of(label)}, expected true (a good answer) or false")
    if "completion" in record:  # TRL unpaired
        prompt = prompt_chat(record)
        completion = answer_turns(record["completion"], "completion")
    else:  # LLaMA-Factory KTO: the last assistant turn is the judged answer
        key = "messages" if "messages" in record else "conversations"
        if key not in record:
            raise RecordProblem("missing_field", f"a record with '{LABEL_KEYS[0]}' needs 'completion' (and 'prompt'), "
                                "or 'messages'")
        chat = _conversation({key: record[key], **_extra(record)}, key)
        last = max(i for i, m in enumerate(chat.messages) if m.role == "assistant")
        prompt, completion = Chat(chat.messages[:last], chat.tools), chat.messages[last:]
    _need_prompt(prompt)
    return Labelled(prompt, completion, label)


def _pair(prompt: Chat, chosen: tuple[Message, ...], rejected: tuple[Message, ...]) -> Pair:
    _need_prompt(prompt)
    return Pair(prompt, chosen, rejected)


def _need_prompt(prompt: Chat) -> None:
    if not prompt.messages:
        raise RecordProblem("bad_structure", "the prompt is empty: nothing comes before the answers")


def _extra(record: dict[str, Any]) -> dict[str, Any]:
    return {k: record[k] for k in ("tools", "functions", "system") if k in record}


def _conversation(record: dict[str, Any], key: str) -> Chat:
    """A conversation that may end without an assistant turn (a prompt): parsed like any other."""
    parse = parse_messages if key == "messages" else parse_sharegpt
    try:
        return parse(record, need_answer=False)
    except RecordProblem as problem:
        raise RecordProblem(problem.kind, f"in '{key}': {problem.message}") from None


def prompt_chat(record: dict[str, Any]) -> Chat:
    """A `prompt`: a string (one user turn, after a `system` string) or a list of messages; with the tools."""
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        system = [Message("system", string(record["system"], "system"))] if record.get("system") else []
        tools = parse_tools(record.get("tools"), "tools") + parse_tools(record.get("functions"), "functions")
        return Chat((*system, Message("user", prompt)), tools)
    if isinstance(prompt, list):
        return _conversation({"messages": prompt, **_extra(record)}, "messages")
    raise RecordProblem("bad_content", f"'prompt' is {kind_of(prompt)}, expected a string or a list of messages")


def _alpaca_prompt(record: dict[str, Any]) -> Chat:
    instruction = string(record["instruction"], "instruction")
    input_text = record.get("input")
    input_text = "" if input_text is None else string(input_text, "input")
    messages: list[Message] = []
    if record.get("system") is not None:
        messages.append(Message("system", string(record["system"], "system")))
    for i, pair in enumerate(record.get("history") or []):
        if not (isinstance(pair, list) and len(pair) == 2):
            raise RecordProblem("bad_structure", f"history[{i}] must be [question, answer]")
        messages += [Message("user", string(pair[0], f"history[{i}][0]")),
                     Message("assistant", string(pair[1], f"history[{i}][1]"))]
    messages.append(Message("user", alpaca_prompt(instruction, input_text)))
    return Chat(tuple(messages))


def answer_turns(value: Any, where: str) -> tuple[Message, ...]:
    """An answer: a string (one assistant turn) or a list of assistant messages."""
    if isinstance(value, str):
        return (Message("assistant", value),)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordProblem("bad_content", f"'{where}' is {kind_of(value)}, expected a string or assistant messages")
    chat = _conversation({"messages": value}, "messages")
    if chat.messages[0].role != "assistant":
        raise RecordProblem("bad_structure", f"'{where}' must start with an assistant turn, not "
                            f"{chat.messages[0].role!r}")
    return chat.messages


def _sharegpt_answer(value: Any, where: str) -> tuple[Message, ...]:
    if isinstance(value, dict) and "from" in value:
        chat = _conversation({"conversations": [value]}, "conversations")
        return chat.messages
    return answer_turns(value, where)


def _whole_conversation(value: Any) -> bool:
    """Messages that start before the answer (a user or system turn): the prompt is inside them."""
    return (isinstance(value, list) and bool(value) and isinstance(value[0], dict)
            and value[0].get("role") not in (None, "assistant"))


def _implicit(record: dict[str, Any], stated: str | None = None) -> Pair:
    """TRL's implicit prompt: chosen and rejected are whole conversations; the prompt is their common start.

    `stated`: the record's own string `prompt`, which must be the last user turn of that start.
    """
    chosen, rejected = record["chosen"], record["rejected"]
    if isinstance(chosen, str) and isinstance(rejected, str):
        raise RecordProblem("missing_field", "a preference record whose answers are strings needs a 'prompt' "
                            "(or 'question', 'instruction', 'messages')")
    chosen_chat = _conversation({"messages": chosen, **_extra(record)}, "messages")
    rejected_chat = _conversation({"messages": rejected, **_extra(record)}, "messages")
    n = 0
    for a, b in zip(chosen_chat.messages, rejected_chat.messages, strict=False):
        if a != b:
            break
        n += 1
    if n == 0 or n == len(chosen_chat.messages) or n == len(rejected_chat.messages):
        raise RecordProblem("bad_structure", "chosen and rejected must share a prompt and then differ")
    if stated is not None:
        _agrees(stated, chosen_chat.messages[:n])
    return _pair(Chat(chosen_chat.messages[:n], chosen_chat.tools), chosen_chat.messages[n:],
                 rejected_chat.messages[n:])


def _agrees(stated: str, shared: tuple[Message, ...]) -> None:
    asked = next((m.content for m in reversed(shared) if m.role == "user"), "")
    if asked.strip() != stated.strip():  # exports differ in a trailing newline, never in the words
        raise RecordProblem("prompt_mismatch", f"'prompt' ({_clip(stated)!r}) is not the last user turn that "
                            f"'chosen' and 'rejected' share ({_clip(asked)!r}): which one is the prompt?")


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _openai(record: dict[str, Any]) -> Pair:
    source = record.get("input")
    if not isinstance(source, dict) or "messages" not in source:
        raise RecordProblem("missing_field", "an OpenAI preference record needs 'input' with 'messages'")
    for key in ("preferred_output", "non_preferred_output"):
        if key not in record:
            raise RecordProblem("missing_field", f"an OpenAI preference record needs '{key}'")
    prompt = _conversation({"messages": source["messages"], **_extra(source)}, "messages")
    return _pair(prompt, answer_turns(record["preferred_output"], "preferred_output"),
                 answer_turns(record["non_preferred_output"], "non_preferred_output"))

"""Real dataset shapes (LLaMA-Factory, OpenAI, TRL, Axolotl): trained as their authors meant, or refused by name.

Each shape goes through `check_file`, which validates and tokenises exactly as a job does; what
carries loss is read back from the token masks. Tool calls are checked twice: with a template that
renders tools (Qwen3's) and with one that ignores them (SmolLM2's, which takes the fallback).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from data_helpers import chat, write_jsonl

from finetuned.config import DataSettings
from finetuned.data import check_file

FIXTURES = Path(__file__).parents[1] / "fixtures"
END = "<|im_end|>"


@pytest.fixture(scope="module")
def qwen3(model_dir: Path) -> Any:
    """builtin:tiny's tokenizer (ChatML tokens) with the Qwen3 chat template, which renders tools."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = (FIXTURES / "templates" / "qwen3.jinja").read_text(encoding="utf-8")
    return tokenizer


def check(path: Path, tokenizer: Any, show: int = 5, **settings: Any) -> dict[str, Any]:
    return check_file(path, tokenizer, DataSettings(**settings), 2048, show)


def trained(report: dict[str, Any], example: int = 0) -> list[str]:
    return report["shown"][example]["trained"]


def kinds(entries: list[dict[str, Any]]) -> set[str]:
    return {e["kind"] for e in entries}


CITY = {"type": "object", "properties": {"city": {"type": "string"}}}
WEATHER = {"type": "function",
           "function": {"name": "get_weather", "description": "Weather in a city", "parameters": CITY}}


def openai_call(content: Any = None, *, key: bool = True) -> dict[str, Any]:
    turn: dict[str, Any] = {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}
    if key:
        turn["content"] = content
    return {"messages": [{"role": "user", "content": "Weather in Paris?"}, turn,
                         {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp\": 21}"},
                         {"role": "assistant", "content": "21 degrees."}], "tools": [WEATHER]}


@pytest.mark.parametrize("call", [openai_call(None), openai_call(""), openai_call(key=False)],
                         ids=["content-null", "content-empty", "no-content-key"])
def test_openai_tool_calls_train_the_call_in_the_templates_own_form(tmp_path, qwen3, call):
    report = check(write_jsonl(tmp_path / "calls.jsonl", [call]), qwen3)
    assert report["ok"], report
    rendered, pieces = report["shown"][0]["rendered"], trained(report)
    assert "<tools>" in rendered and '"name": "get_weather"' in rendered, "the tools reach the template"
    assert pieces[0] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' + END, \
        "the call is trained, arguments as a JSON object, closed by the end of turn"
    assert pieces[-1] == "21 degrees." + END
    assert not any("temp" in p for p in pieces), "tool results are never trained"


def test_legacy_function_call_and_functions_are_calls_and_tools(tmp_path, qwen3):
    record = {"messages": [
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "function_call": {"name": "get_weather", "arguments": "{\"city\": \"Rome\"}"}},
        {"role": "function", "name": "get_weather", "content": "25"},
        {"role": "assistant", "content": "25 degrees."}], "functions": [WEATHER["function"]]}
    report = check(write_jsonl(tmp_path / "legacy.jsonl", [record]), qwen3)
    assert report["ok"], report
    assert '"name": "get_weather"' in report["shown"][0]["rendered"].split("\n</tools>")[0]
    assert trained(report)[0].startswith('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}')


def test_trl_messages_with_tools_and_dict_arguments(tmp_path, qwen3):
    record = {"messages": [
        {"role": "user", "content": "Turn on the light"},
        {"role": "assistant", "tool_calls": [{"type": "function", "function": {
            "name": "control_light", "arguments": {"on": True}}}]},
        {"role": "tool", "name": "control_light", "content": "ok"},
        {"role": "assistant", "content": "Done."}],
        "tools": [{"type": "function", "function": {"name": "control_light", "parameters": {"type": "object"}}}]}
    report = check(write_jsonl(tmp_path / "trl.jsonl", [record]), qwen3)
    assert report["ok"], report
    assert trained(report) == ['<tool_call>\n{"name": "control_light", "arguments": {"on": true}}\n</tool_call>'
                               + END, "Done." + END]


def test_trl_conversational_prompt_completion_trains_the_completion_only(tokenizer):
    """TRL's SFT shape: `prompt` and `completion` as message lists, no `label`. The prompt is context,
    an assistant turn inside it included; the completion's assistant turns train."""
    report = check(FIXTURES / "formats" / "trl_prompt_completion_conversational.jsonl", tokenizer)
    assert (report["ok"], report["format"], report["objective"], report["kept"]) == (True, "completion", "sft", 2), \
        report
    assert trained(report, 0) == ["It is blue." + END]
    second = report["shown"][1]
    assert second["trained"] == ["Madrid." + END], "the prompt's earlier answer (Rome.) is context, not trained"
    assert "Answer in one word." in second["rendered"] and "Rome." in second["rendered"]


def test_a_completion_list_that_does_not_start_with_the_answer_is_refused(tmp_path, tokenizer):
    record = {"prompt": [{"role": "user", "content": "Hi"}], "completion": [{"role": "user", "content": "Hi"}]}
    report = check(write_jsonl(tmp_path / "pc.jsonl", [record]), tokenizer)
    assert not report["ok"] and "'completion' must start with an assistant turn" in report["error"]


def test_llama_factory_glaive_tool_calling_renders_tools_and_trains_calls(qwen3):
    report = check(FIXTURES / "formats" / "glaive_toolcall_en_demo.json", qwen3)
    assert (report["ok"], report["format"], report["kept"]) == (True, "sharegpt", 2), report
    first, plain = report["shown"]
    tools = first["rendered"].split("\n</tools>")[0]
    assert '"name": "search_recipes"' in tools, "the tools column reaches the template"
    assert any(p.startswith('<tool_call>\n{"name": "search_recipes", "arguments": {"ingredients": ["chicken"')
               for p in first["trained"])
    assert not any("Chicken and Rice Casserole" in p and "ingredients" in p and p.startswith("{")
                   for p in first["trained"]), "observations are not trained"
    assert "<tools>" not in plain["rendered"], '"tools": "[]" means no tools'


def test_a_template_without_tools_takes_the_documented_fallback_and_says_so(tmp_path, tokenizer):
    report = check(write_jsonl(tmp_path / "calls.jsonl", [openai_call(None)]), tokenizer)
    assert report["ok"], report
    rendered = report["shown"][0]["rendered"]
    assert "You can call these functions" in rendered and '"name": "get_weather"' in rendered.split("<|im_end|>")[0]
    assert trained(report)[0] == '{"name": "get_weather", "arguments": {"city": "Paris"}}' + END
    assert "tools_fallback" in kinds(report["warnings"])


@pytest.mark.parametrize("flag", [{"weight": 0}, {"train": False}, {"loss_weight": 0.0}],
                         ids=["openai-weight", "axolotl-train", "llamafactory-loss_weight"])
def test_a_turn_marked_not_to_train_carries_no_loss(tmp_path, tokenizer, flag):
    record = {"messages": [{"role": "user", "content": "Capital of France?"},
                           {"role": "assistant", "content": "France's capital city is Paris.", **flag},
                           {"role": "user", "content": "Shorter."},
                           {"role": "assistant", "content": "Paris."}]}
    report = check(write_jsonl(tmp_path / "weights.jsonl", [record]), tokenizer)
    assert report["ok"] and trained(report) == ["Paris." + END]


def test_axolotl_train_true_on_a_user_turn_trains_its_content(tmp_path, tokenizer):
    record = {"conversations": [{"from": "human", "value": "Hello", "train": False},
                                {"from": "gpt", "value": "Hi!", "train": True},
                                {"from": "human", "value": "Teach me this line.", "train": True},
                                {"from": "gpt", "value": "Sure.", "train": False}]}
    report = check(write_jsonl(tmp_path / "axolotl.jsonl", [record]), tokenizer)
    assert report["ok"] and trained(report) == ["Hi!" + END, "Teach me this line."]


def test_every_turn_marked_not_to_train_is_dropped_and_counted(tmp_path, tokenizer):
    silent = chat(("user", "q"), ("assistant", "a")) | {}
    silent["messages"][1]["weight"] = 0
    report = check(write_jsonl(tmp_path / "silent.jsonl", [silent] + [chat(("user", "q"), ("assistant", "b"))] * 3),
                   tokenizer)
    assert report["ok"] and report["dropped"] == {"no_trained_token": 1} and report["kept"] == 3
    assert "data_loss" in kinds(report["warnings"]), "25% of the file lost is worth a warning"


def test_llama_factory_v1_typed_parts_and_loss_weight(tokenizer):
    report = check(FIXTURES / "formats" / "v1_sft_demo.jsonl", tokenizer)
    assert report["ok"] and report["format"] == "chat", report
    assert trained(report) == ["Hello! I am {{name}}, an AI assistant developed by {{author}}. "
                               "How can I assist you today?" + END]
    assert "placeholders" in kinds(report["warnings"]), "{{name}} left in the data is worth a warning"


def test_openai_text_parts_are_joined(tmp_path, tokenizer):
    parts = [{"type": "text", "text": "Say "}, {"type": "text", "text": "hi"}]
    record = {"messages": [{"role": "user", "content": parts},
                           {"role": "assistant", "content": [{"type": "text", "text": "hi"}]}]}
    report = check(write_jsonl(tmp_path / "parts.jsonl", [record]), tokenizer)
    assert report["ok"] and "Say hi" in report["shown"][0]["rendered"] and trained(report) == ["hi" + END]


REFUSED = {
    "image-part": ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]},
                                 {"role": "assistant", "content": "A cat."}]}, "unsupported_part", "'image_url' part"),
    "fractional-weight": ({"messages": [{"role": "user", "content": "q"},
                                        {"role": "assistant", "content": "a", "loss_weight": 0.5}]},
                          "unsupported_weight", "loss_weight is 0.5"),
    "label-not-boolean": ({"prompt": "2+2?", "completion": "5", "label": "bad"}, "bad_label", "'label'"),
    "pair-without-rejected": ({"prompt": "2+2?", "chosen": "4"}, "missing_field", "'rejected'"),
}


@pytest.mark.parametrize("name", list(REFUSED))
def test_what_training_would_not_honour_is_refused_naming_the_key(tmp_path, tokenizer, name):
    record, kind, named = REFUSED[name]
    report = check(write_jsonl(tmp_path / f"{name}.jsonl", [record]), tokenizer)
    assert not report["ok"]
    assert kind in kinds(report["problems"]), report["problems"]
    assert named in report["error"] + json.dumps(report["problems"]), report


@pytest.mark.parametrize(("name", "kind", "named"), [
    ("mllm_demo.json", "media", "'images'"),
    ("reason_tool_use_demo_50.jsonl", "unsupported_part", "'reasoning' part"),
])
def test_llama_factory_demo_files_that_would_train_wrong_are_refused(tokenizer, name, kind, named):
    report = check(FIXTURES / "formats" / name, tokenizer)
    assert not report["ok"] and kind in kinds(report["problems"]), report
    assert named in json.dumps(report["problems"])


def test_a_json_file_holding_one_pretty_printed_record_trains(tmp_path, tokenizer):
    path = tmp_path / "one.json"
    path.write_text(json.dumps(chat(("user", "Hi"), ("assistant", "Hello.")), indent=2))
    report = check(path, tokenizer)
    assert (report["ok"], report["kept"]) == (True, 1) and trained(report) == ["Hello." + END]


def test_a_json_object_wrapping_the_records_is_refused_saying_where_they_are(tmp_path, tokenizer):
    path = tmp_path / "wrapped.json"
    path.write_text(json.dumps({"data": [chat(("user", "Hi"), ("assistant", "Hello."))] * 3}, indent=2))
    report = check(path, tokenizer)
    assert not report["ok"]
    assert "'data' holds 3 records" in report["error"] and "invalid_json" not in report["error"], report["error"]


def test_a_plain_text_file_is_refused_with_the_way_to_wrap_it(tokenizer):
    report = check(FIXTURES / "formats" / "wiki_demo.txt", tokenizer)
    assert not report["ok"] and "wrap each line" in report["error"] and '{"text"' in report["error"], report


def test_messages_say_an_alpaca_record(tmp_path, tokenizer):
    report = check(write_jsonl(tmp_path / "a.jsonl", [{"instruction": "x"}]), tokenizer)
    assert "an alpaca record needs 'output'" in json.dumps(report["problems"])


def test_unused_keys_are_reported_not_dropped_in_silence(tmp_path, tokenizer):
    records = [dict(chat(("user", "q"), ("assistant", "a")), id=i, source="web") for i in range(3)]
    report = check(write_jsonl(tmp_path / "extra.jsonl", records), tokenizer)
    assert report["ok"]
    (note,) = [w for w in report["warnings"] if w["kind"] == "unused_keys"]
    assert "id, source" in note["message"]

"""Which tokens carry loss, per format: decoded from the arrays `prepare` writes to disk.

Each test prints the rendered example with trained tokens in [[ ]] (run with -s to see them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from data_helpers import chat, read_prepared, write_jsonl

from finetuned.data import prepare, render, trained_spans

END = "<|im_end|>"
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def prepared_spans(
    tmp_path: Path,
    tokenizer: Any,
    records: list[dict[str, Any]],
    settings: Any = None,
    name: str = "data.jsonl",
) -> list[list[str]]:
    path = write_jsonl(tmp_path / name, records)
    prepare(path, tmp_path / "prepared", tokenizer, settings, 512)
    print(render(records[0], tokenizer, settings))
    return [trained_spans(ids, mask, tokenizer) for ids, mask in read_prepared(tmp_path / "prepared")]


def full_text(tmp_path: Path, tokenizer: Any) -> list[str]:
    return [tokenizer.decode(ids.tolist()) for ids, _ in read_prepared(tmp_path / "prepared")]


def test_chat_multi_turn_trains_every_assistant_turn_and_its_end_token(tmp_path: Path, tokenizer: Any) -> None:
    record = chat(
        ("system", "Answer in French."),
        ("user", "Hello"),
        ("assistant", "Bonjour !"),
        ("user", "And goodbye?"),
        ("assistant", "Au revoir.\nÀ bientôt."),
    )
    spans = prepared_spans(tmp_path, tokenizer, [record])
    assert spans == [["Bonjour !" + END, "Au revoir.\nÀ bientôt." + END]]
    text = full_text(tmp_path, tokenizer)[0]
    assert "Answer in French." in text and DEFAULT_SYSTEM not in text, "the file's own system prompt is kept"


def test_chat_tool_turns_are_not_trained(tmp_path: Path, tokenizer: Any) -> None:
    record = chat(
        ("user", "Weather?"),
        ("assistant", "Calling the tool."),
        ("tool", "sunny, 21C"),
        ("assistant", "It is sunny."),
    )
    assert prepared_spans(tmp_path, tokenizer, [record]) == [["Calling the tool." + END, "It is sunny." + END]]


def test_sharegpt_maps_speakers_and_trains_gpt_turns(tmp_path: Path, tokenizer: Any) -> None:
    record = {
        "system": "Be terse.",
        "conversations": [
            {"from": "human", "value": "2+2?"},
            {"from": "gpt", "value": "4"},
            {"from": "human", "value": "3+3?"},
            {"from": "gpt", "value": "6"},
        ],
    }
    assert prepared_spans(tmp_path, tokenizer, [record]) == [["4" + END, "6" + END]]
    text = full_text(tmp_path, tokenizer)[0]
    assert "<|im_start|>system\nBe terse." in text and "<|im_start|>user\n2+2?" in text


@pytest.mark.parametrize(
    ("input_text", "user_turn"),
    [("", "Name a colour."), ("Think of the sky.", "Name a colour.\n\nThink of the sky.")],
)
def test_alpaca_trains_only_the_output(tmp_path: Path, tokenizer: Any, input_text: str, user_turn: str) -> None:
    record = {"instruction": "Name a colour.", "input": input_text, "output": "Blue."}
    assert prepared_spans(tmp_path, tokenizer, [record]) == [["Blue." + END]]
    text = full_text(tmp_path, tokenizer)[0]
    assert f"<|im_start|>user\n{user_turn}{END}" in text
    assert DEFAULT_SYSTEM in text, "without a system prompt the model's template default applies"


def test_alpaca_system_field_becomes_the_system_turn(tmp_path: Path, tokenizer: Any) -> None:
    record = {"system": "You are a painter.", "instruction": "Name a colour.", "output": "Ochre."}
    assert prepared_spans(tmp_path, tokenizer, [record]) == [["Ochre." + END]]
    assert full_text(tmp_path, tokenizer)[0].startswith("<|im_start|>system\nYou are a painter.")


def test_completion_trains_only_the_completion(tmp_path: Path, tokenizer: Any) -> None:
    record = {"prompt": "The capital of France is", "completion": "Paris."}
    assert prepared_spans(tmp_path, tokenizer, [record]) == [["Paris." + END]]


def test_text_trains_everything_after_the_first_token_and_ends_with_eos(tmp_path: Path, tokenizer: Any) -> None:
    record = {"text": "Bees make honey. Honey keeps for years."}
    prepared_spans(tmp_path, tokenizer, [record])
    [(ids, mask)] = read_prepared(tmp_path / "prepared")
    assert tokenizer.decode(ids.tolist()) == record["text"] + END
    assert mask[0] == 0, "nothing predicts an example's first token"
    assert mask[1:].all()


def test_train_on_prompt_trains_every_token(tmp_path: Path, tokenizer: Any, settings: Any) -> None:
    record = chat(("user", "Hi"), ("assistant", "Hello."))
    prepared_spans(tmp_path, tokenizer, [record], settings(train_on_prompt=True))
    [(ids, mask)] = read_prepared(tmp_path / "prepared")
    assert mask[0] == 0 and mask[1:].all()
    assert tokenizer.decode(ids.tolist()) == tokenizer.apply_chat_template(record["messages"], tokenize=False)


@pytest.mark.parametrize("has_system", [True, False])
def test_system_prompt_setting_replaces_or_adds_the_system_turn(
    tmp_path: Path, tokenizer: Any, settings: Any, has_system: bool
) -> None:
    turns = [("user", "Hi"), ("assistant", "Hello.")]
    record = chat(*([("system", "Old prompt.")] if has_system else []), *turns)
    spans = prepared_spans(tmp_path, tokenizer, [record], settings(system_prompt="Speak like a pirate."))
    assert spans == [["Hello." + END]]
    text = full_text(tmp_path, tokenizer)[0]
    assert text.startswith("<|im_start|>system\nSpeak like a pirate.<|im_end|>\n<|im_start|>user\nHi")
    assert "Old prompt." not in text and DEFAULT_SYSTEM not in text


def test_pad_equal_to_eos_does_not_hide_the_end_of_turn(tmp_path: Path, tokenizer: Any) -> None:
    """SmolLM2's pad token is its end-of-turn token: the trained answer must still end with it."""
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    prepared_spans(tmp_path, tokenizer, [chat(("user", "Hi"), ("assistant", "Bye."))])
    [(ids, mask)] = read_prepared(tmp_path / "prepared")
    eos_positions = (ids == tokenizer.eos_token_id).nonzero()[0]
    trained_eos = [p for p in eos_positions if mask[p]]
    assert len(trained_eos) == 1 and ids[trained_eos[0] - 1] != tokenizer.eos_token_id


def test_fallback_template_when_the_tokenizer_has_none(tmp_path: Path, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    plain = AutoTokenizer.from_pretrained(model_dir)
    plain.chat_template = None
    record = chat(("system", "Be kind."), ("user", "Hi"), ("assistant", "Hello."))
    assert prepared_spans(tmp_path, plain, [record]) == [["Hello." + END]]
    assert full_text(tmp_path, plain)[0] == (
        f"### System:\nBe kind.\n\n### User:\nHi\n\n### Assistant:\nHello.{END}\n\n"
    )


def test_render_marks_trained_tokens(tokenizer: Any) -> None:
    shown = render(chat(("user", "Hi"), ("assistant", "Hello.")), tokenizer)
    assert shown.endswith("<|im_start|>assistant\n[[Hello.<|im_end|>]]\n")
    assert shown.count("[[") == 1


def test_template_that_rewrites_content_still_masks_exactly(tmp_path: Path, model_dir: Path) -> None:
    """A template that trims content defeats the fast skeleton; the prefix-rendering path takes over."""
    from transformers import AutoTokenizer

    trimming = AutoTokenizer.from_pretrained(model_dir)
    trimming.chat_template = trimming.chat_template.replace("message['content']", "(message['content'] | trim)")
    record = chat(("assistant", "  Hi there.  "), ("user", " q "), ("assistant", "\nBye.\n"))
    assert prepared_spans(tmp_path, trimming, [record]) == [["Hi there." + END, "Bye." + END]]


def test_direct_rendering_matches_apply_chat_template_on_real_data(tokenizer: Any, datasets: Path) -> None:
    """The fast path calls the compiled template itself: it must render byte for byte the same."""
    import json

    from finetuned.data.formats import parse_record
    from finetuned.data.masking import ChatRenderer

    renderer = ChatRenderer(tokenizer, train_on_prompt=False)
    assert renderer._direct is not None, "SmolLM2's template should take the fast path"
    records = json.loads((datasets / "alpaca_en_demo.json").read_text(encoding="utf-8"))
    records.append(chat(("system", " odd\tspacing "), ("user", "{{ not a tag }}"), ("assistant", "")))
    for record in records:
        dicts = [{"role": m.role, "content": m.content} for m in parse_record(record)[1].messages]
        for generation_prompt in (False, True):
            assert renderer._apply(dicts, generation_prompt) == tokenizer.apply_chat_template(
                dicts, tokenize=False, add_generation_prompt=generation_prompt
            )


def test_a_template_that_refuses_the_probe_takes_the_public_path(tmp_path: Path, model_dir: Path) -> None:
    from transformers import AutoTokenizer

    from finetuned.data.masking import ChatRenderer

    strict = AutoTokenizer.from_pretrained(model_dir)
    strict.chat_template = (
        "{% if messages[0]['role'] == 'system' %}{{ raise_exception('no system turns') }}{% endif %}"
        + strict.chat_template
    )
    assert ChatRenderer(strict, train_on_prompt=False)._direct is None
    record = chat(("user", "Hi"), ("assistant", "Hello."))
    assert prepared_spans(tmp_path, strict, [record]) == [["Hello." + END]]

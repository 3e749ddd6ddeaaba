"""A conversation: its turns in the template training uses, the system prompt kept, the oldest turns dropped."""

from __future__ import annotations

import pytest

from finetuned.chat.conversation import Conversation
from finetuned.data.masking import FALLBACK_TEMPLATE
from finetuned.models.loading import load_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


def test_turns_render_with_the_template_and_end_at_the_answer(tokenizer):
    chat = Conversation(tokenizer, system="Be brief.")
    chat.ask("Hi?")
    chat.answered("Hello.")
    chat.ask("Bye?")
    assert chat.prompt() == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n"
                             "<|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye?<|im_end|>\n"
                             "<|im_start|>assistant\n")
    chat.reset()
    chat.ask("Again?")
    assert chat.prompt().startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nAgain?")


def test_a_model_without_a_template_gets_the_fallback_training_uses(tokenizer):
    plain = type(tokenizer).from_pretrained(tokenizer.name_or_path)
    plain.chat_template = None
    chat = Conversation(plain)
    chat.ask("Hi?")
    expected = plain.apply_chat_template([{"role": "user", "content": "Hi?"}], chat_template=FALLBACK_TEMPLATE,
                                         tokenize=False, add_generation_prompt=True)
    assert chat.prompt() == expected == "### User:\nHi?\n\n### Assistant:\n"


def test_the_oldest_exchanges_go_when_the_prompt_would_not_fit(tokenizer):
    chat = Conversation(tokenizer)
    for i in range(6):
        chat.ask(f"question {i} " + "words " * 20)
        chat.answered(f"answer {i}")
    chat.ask("the last question")
    whole = len(chat.prompt_ids())
    ids = chat.prompt_ids(room=whole // 2)
    assert len(ids) <= whole // 2 and chat.forgotten >= 1
    assert chat.turns[-1]["content"] == "the last question" and chat.turns[0]["role"] == "user"
    assert chat.turns[0]["content"].startswith(f"question {chat.forgotten} ")

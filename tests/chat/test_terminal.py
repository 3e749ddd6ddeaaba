"""The terminal's loop with piped lines: answers on stdout, prompts in the notes, /reset and /exit obeyed."""

from __future__ import annotations

import io
import json

import pytest
import torch
from rich.console import Console

from finetuned.chat.conversation import Conversation
from finetuned.chat.generate import GREEDY, reply
from finetuned.chat.terminal import Options, Terminal
from finetuned.models.loading import load_model, load_tokenizer


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    torch.manual_seed(0)
    return load_model(tiny_model_dir), load_tokenizer(tiny_model_dir)


def _run(model, tokenizer, lines: str, **options) -> tuple[list[str], str, Conversation]:
    out, notes = io.StringIO(), io.StringIO()
    conversation = Conversation(tokenizer)
    terminal = Terminal(model, tokenizer, conversation, Options(8, GREEDY, **options), "the model", out,
                        Console(file=notes, width=10_000), interactive=False)
    terminal.run(terminal.prompts(io.StringIO(lines)))
    return out.getvalue().splitlines(), notes.getvalue(), conversation


def test_turns_carry_on_until_reset_and_exit_ends(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    answers, notes, conversation = _run(model, tokenizer, "first\n\nsecond\n/reset\nthird\n/exit\nnever\n",
                                        json=True, show_prompt=True)
    assert [json.loads(a)["prompt"] for a in answers] == ["first", "second", "third"], "blank lines are skipped"
    second = notes.split("user\nsecond")[0]
    assert "user\nfirst" in second, "the second question sees the first exchange"
    third = notes.split("user\nthird")[0].rsplit("system\n", 1)[1]
    assert "first" not in third and "second" not in third, "/reset forgot them"
    assert [t["content"] for t in conversation.turns] == ["third", json.loads(answers[2])["answer"]]
    assert "never" not in notes


def test_plain_answers_are_one_line_each_and_match_a_direct_reply(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    answers, _, _ = _run(model, tokenizer, "Say hi.\n")
    direct = Conversation(tokenizer)
    direct.ask("Say hi.")
    assert answers == [reply(model, tokenizer, direct.prompt_ids(), 8)]

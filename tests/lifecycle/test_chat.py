"""`finetuned chat` as a user runs it: a real process, stdin piped, on a real trained adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import make_workspace
from lifecycle_helpers import cli, lifecycle_config

from finetuned.workspace import Workspace

pytestmark = pytest.mark.e2e  # each runs `finetuned chat` on a trained adapter and generates: many seconds

QUESTIONS = ["Say hi number 3.", "And number 4?"]
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM"  # the tiny model's template adds it


def _direct_greedy(ws: Workspace, job_id: str, questions: list[str], system: str | None,
                   max_new_tokens: int) -> list[str]:
    """The adapter on its base, loaded with transformers and peft alone; the prompt from the tokenizer's
    template as a user of those libraries would build it: the answers `finetuned chat` must give."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    record = json.loads(ws.adapter_record(job_id).read_text())
    base = ws.base_models / record["base_model"].removeprefix("builtin:")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32),
                                      str(ws.adapter_dir(job_id))).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(base))
    messages = [{"role": "system", "content": system}] if system is not None else []
    answers = []
    for question in questions:
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id)
        answers.append(tokenizer.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True))
        messages.append({"role": "assistant", "content": answers[-1]})
    return answers


def _job_id(ws: Workspace) -> str:
    return next(p.name for p in ws.adapters.iterdir())


def test_chat_answers_from_an_adapter_as_the_adapter_itself_does(trained: Workspace) -> None:
    job_id = _job_id(trained)
    run = cli("chat", job_id, "--root", str(trained.root), "--json", "--max-new-tokens", "16",
              stdin="\n".join(QUESTIONS) + "\n")
    assert run.returncode == 0, run.stderr
    answers = [json.loads(line) for line in run.stdout.splitlines()]
    assert [a["prompt"] for a in answers] == QUESTIONS
    assert [a["answer"] for a in answers] == _direct_greedy(trained, job_id, QUESTIONS, None, 16)
    assert any(a["answer"].strip() for a in answers), "the adapter answers something"
    # the header names what answers and how far it trained; it goes to stderr, so stdout is answers only
    assert f"chat with the adapter of job {job_id} (line step " in run.stderr
    assert "greedy" in run.stderr and "\x1b[" not in run.stdout + run.stderr, "no colours into a pipe"


def test_a_system_prompt_is_in_the_prompt_the_model_reads(trained: Workspace) -> None:
    job_id = _job_id(trained)
    system = "Answer in one short line."
    run = cli("chat", job_id, "--root", str(trained.root), "--system", system, "--show-prompt",
              "--max-new-tokens", "8", stdin=QUESTIONS[0] + "\n")
    assert run.returncode == 0, run.stderr
    assert f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{QUESTIONS[0]}<|im_end|>\n" \
           "<|im_start|>assistant\n" in run.stderr
    assert DEFAULT_SYSTEM not in run.stderr
    assert run.stdout == _direct_greedy(trained, job_id, QUESTIONS[:1], system, 8)[0] + "\n"
    plain = cli("chat", job_id, "--root", str(trained.root), "--show-prompt", "--max-new-tokens", "8",
                stdin="/reset\n" + QUESTIONS[0] + "\n/exit\nnever read\n")
    assert plain.returncode == 0, plain.stderr
    assert DEFAULT_SYSTEM in plain.stderr and system not in plain.stderr
    assert plain.stdout.count("\n") == 1, "one answer: /reset and /exit are commands, not messages"


def test_unknown_target_device_and_no_checkpoint_yet_are_one_line_errors(trained: Workspace, tmp_path: Path) -> None:
    run = cli("chat", "nope", "--root", str(trained.root), stdin="hello\n")
    assert run.returncode == 1
    assert run.stderr.startswith("error: no version 'nope'") and run.stderr.count("\n") == 1, run.stderr
    run = cli("chat", "--device", "cuda:99", "--root", str(trained.root), stdin="hello\n")
    assert run.returncode == 1 and run.stderr.startswith("error: --device cuda:99: this machine has "), run.stderr
    fresh = make_workspace(tmp_path / "fresh", lifecycle_config())
    run = cli("chat", "latest", "--root", str(fresh.root), stdin="hello\n")
    assert run.returncode == 1
    assert run.stderr == "error: no checkpoint trained on the current base builtin:tiny yet\n"

"""The built-in models: written out once, loadable as plain Hugging Face folders."""

from __future__ import annotations

import pytest
import torch

from finetuned.config import LoraSettings
from finetuned.models.builtin import BuiltinModelError, materialize
from finetuned.models.loading import ModelError, add_lora, load_model, load_tokenizer, resolve_base
from finetuned.workspace import Workspace


def test_tiny_is_a_small_llama_with_smollm2_tokenizer(tiny_model_dir):
    model = load_model(tiny_model_dir)
    tokenizer = load_tokenizer(tiny_model_dir)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert model.config.vocab_size == len(tokenizer)


def test_unknown_builtin_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(BuiltinModelError, match="known: builtin:"):
        materialize("builtin:gpt-17", tmp_path)
    ws = Workspace.at(tmp_path / "ws")
    with pytest.raises(ModelError, match="no such folder"):
        resolve_base(str(tmp_path / "nowhere"), ws)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="not a Hugging Face model folder"):
        resolve_base(str(tmp_path / "empty"), ws)


@pytest.mark.slow
def test_smollm2_loads_generates_and_trains_a_few_lora_steps(tmp_path):
    """The real built-in: converted from its GGUF once, answers sensibly, and LoRA trains on it."""
    folder = materialize("builtin:smollm2-135m-instruct", tmp_path / "base")
    tokenizer = load_tokenizer(folder)
    model = load_model(folder)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer

    model = add_lora(model, LoraSettings())
    trainable = [p for p in model.parameters() if p.requires_grad]
    before = [p.detach().clone() for p in trainable]
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi there!"}], tokenize=False)
    batch = tokenizer([text] * 2, return_tensors="pt")
    losses = []
    for _ in range(3):
        loss = model(**batch, labels=batch["input_ids"]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, trainable, strict=True))

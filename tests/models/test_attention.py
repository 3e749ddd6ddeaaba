"""Per-example attention for packed rows gives what the block mask gives: loss, gradients, generation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from finetuned.config import LoraSettings
from finetuned.data.batches import ExampleStore, pack_rows, packed_batch
from finetuned.models.attention import NAME, use_packed_attention, uses_packed_attention
from finetuned.models.loading import add_lora, load_model
from finetuned.worker.loss import token_loss_sum


def packed_batches(vocab: int, seq: int = 128, rows: int = 3) -> list:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 60, size=40)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = rng.integers(0, vocab, size=int(offsets[-1]))
    mask = (rng.random(len(tokens)) < 0.6).astype(np.uint8)
    store = ExampleStore(tokens, mask, offsets)
    starts = [*pack_rows(lengths, seq).tolist(), len(lengths)]
    packed = [list(range(a, b)) for a, b in itertools.pairwise(starts)]
    return [packed_batch(store, packed[i : i + rows], pad_id=0) for i in range(0, len(packed) - rows, rows)]


def lora_pair(model_dir: Path) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The same LoRA model twice: on the block mask (plain sdpa), and on per-example attention."""
    models = []
    for packed in (False, True):
        torch.manual_seed(0)
        model = load_model(model_dir)
        if not packed:
            model.set_attn_implementation("sdpa")
        models.append(add_lora(model, LoraSettings(r=8, alpha=16, dropout=0.0)).train())
    return models[0], models[1]


def test_loss_and_gradients_match_the_block_mask(tiny_model_dir: Path) -> None:
    masked, per_example = lora_pair(tiny_model_dir)
    assert uses_packed_attention(per_example) and not uses_packed_attention(masked)
    batches = packed_batches(masked.config.vocab_size)
    assert any(len(spans) > 2 for b in batches for spans in b.segments), "rows hold several examples"
    for batch in batches:
        losses = [token_loss_sum(model, batch) for model in (masked, per_example)]
        for loss in losses:
            loss.backward()
        assert losses[1].item() == pytest.approx(losses[0].item(), rel=1e-5)
    grads = [{n: p.grad for n, p in m.named_parameters() if p.requires_grad} for m in (masked, per_example)]
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        # Summation order differs between the kernels: equal to float32 rounding of the largest entry.
        assert (grads[1][name] - grad).abs().max() <= 1e-5 * grad.abs().max() + 1e-8, name


def test_generation_is_unchanged(tiny_model_dir: Path) -> None:
    masked, per_example = (load_model(tiny_model_dir) for _ in range(2))
    masked.set_attn_implementation("sdpa")
    assert per_example.config._attn_implementation == NAME
    prompt = torch.tensor([[1, 50, 60, 70, 80], [0, 0, 90, 91, 92]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]])
    outputs = [m.generate(input_ids=prompt, attention_mask=attention, max_new_tokens=6, do_sample=False)
               for m in (masked, per_example)]
    assert torch.equal(outputs[0], outputs[1])


def test_other_attention_kinds_are_left_alone(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM

    eager = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="eager")
    assert not use_packed_attention(eager)
    assert eager.config._attn_implementation == "eager"

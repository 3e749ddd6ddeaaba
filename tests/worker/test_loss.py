"""The selective, chunked loss equals cross-entropy over the full logits, values and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import chat_lines, tiny_config, write_jsonl

from finetuned.config import LoraSettings
from finetuned.data import JobData, prepare
from finetuned.models.loading import add_lora, load_model, load_tokenizer
from finetuned.worker.loss import token_loss_sum


def full_logits_loss(model, batch) -> torch.Tensor:
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=batch.position_ids, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.labels[:, 1:].reshape(-1),
                           ignore_index=-100, reduction="sum")


@pytest.mark.parametrize(("packing", "chunk"), [(True, 4096), (False, 4096), (True, 7)])
def test_selective_chunked_loss_matches_full_logits(tmp_path, tiny_model_dir, packing, chunk):
    config = tiny_config()
    config.data.packing = packing
    tokenizer = load_tokenizer(tiny_model_dir)
    prepare(write_jsonl(tmp_path / "d.jsonl", chat_lines(12)), tmp_path / "tok", tokenizer, config.data, 128)
    data = JobData.open(tmp_path / "tok", batch_size=4, grad_accum=1, epochs=1, max_steps=None, max_seq_len=128,
                        packing=packing, holdout_fraction=0, max_holdout=0, seed=1, pad_id=tokenizer.pad_token_id)
    batch = data.step_batches(0)[0]
    torch.manual_seed(0)
    model = add_lora(load_model(tiny_model_dir), LoraSettings(dropout=0.0))
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():  # a non-zero LoRA B, so gradients reach every trainable tensor
        for p in params:
            p.add_(torch.randn_like(p) * 0.01)

    expected = full_logits_loss(model, batch)
    expected.backward()
    want = [p.grad.clone() for p in params]
    model.zero_grad()
    got = token_loss_sum(model, batch, chunk_tokens=chunk)
    got.backward()
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    for g, w in zip((p.grad for p in params), want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4 * w.abs().max().item())  # summation order

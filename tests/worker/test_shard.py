"""A step's micro-batches split across ranks: the parts add up to the whole batch, loss and all."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import chat_lines, tiny_config, write_jsonl

from finetuned.data import JobData, prepare
from finetuned.data.batches import IGNORE
from finetuned.models.loading import add_lora, load_model, load_tokenizer
from finetuned.worker.loss import token_loss_sum
from finetuned.worker.shard import rows_of, shard


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    config = tiny_config()
    model = add_lora(load_model(tiny_model_dir, "lora", torch.device("cpu")), config.lora)
    model.eval()  # no dropout: the parts must compute exactly what the whole does
    return model, load_tokenizer(tiny_model_dir)


def step_batches(tmp_path, tokenizer, packing: bool, batch_size: int = 5):
    config = tiny_config(batch_size=batch_size, grad_accum=2)
    config.data.packing = packing
    out = tmp_path / ("packed" if packing else "padded")
    prepare(write_jsonl(tmp_path / "d.jsonl", chat_lines(37)), out, tokenizer, config.data, 128)
    data = JobData.open(out, batch_size=batch_size, grad_accum=2, epochs=1, max_steps=None, max_seq_len=128,
                        packing=packing, holdout_fraction=0.0, max_holdout=0, seed=3, pad_id=tokenizer.pad_token_id)
    return [data.step_batches(s) for s in range(data.total_steps)]


def test_rows_are_split_in_near_equal_runs_that_cover_each_row_once():
    for n in range(0, 9):
        for size in (1, 2, 3, 4):
            parts = [rows_of(n, r, size) for r in range(size)]
            assert np.concatenate(parts).tolist() == list(range(n))
            assert max(map(len, parts)) - min(map(len, parts)) <= 1


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("size", [2, 3, 4])
def test_parts_hold_every_row_and_count_what_the_whole_counts(tmp_path, tiny, packing, size):
    _, tokenizer = tiny
    for batches in step_batches(tmp_path, tokenizer, packing):
        parts = [shard(batches, r, size) for r in range(size)]
        assert all(len(p) == len(batches) for p in parts), "one part per micro-batch on every rank"
        for k, whole in enumerate(batches):
            mine = [p[k] for p in parts]
            assert sum(m.n_loss_tokens for m in mine) == whole.n_loss_tokens
            assert sum(m.n_tokens for m in mine) == whole.n_tokens
            assert sum(m.n_examples for m in mine) == whole.n_examples
            assert all(m.input_ids.size(1) == whole.input_ids.size(1) for m in mine), "rows keep their length"


def test_a_rank_without_rows_runs_a_pass_without_loss(tmp_path, tiny):
    model, tokenizer = tiny
    batch = step_batches(tmp_path, tokenizer, packing=True)[0][0]
    rows = batch.input_ids.size(0)
    part = shard([batch], rows, rows + 1)[0]  # more ranks than rows: the last one gets none
    assert part.input_ids.size(0) == 1 and part.n_loss_tokens == part.n_tokens == part.n_examples == 0
    assert bool((part.labels == IGNORE).all())
    assert token_loss_sum(model, part).item() == 0.0


@pytest.mark.parametrize("packing", [True, False])
def test_the_parts_losses_and_gradients_sum_to_the_whole(tmp_path, tiny, packing):
    """What makes 1, 2 or 4 ranks train alike: per-row results do not depend on the rows beside them."""
    model, tokenizer = tiny
    batches = step_batches(tmp_path, tokenizer, packing)[0]
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(parts):
        model.zero_grad(set_to_none=True)
        total = sum(token_loss_sum(model, b) for b in parts)
        total.backward()
        return total.item(), [p.grad.clone() for p in params]

    whole, whole_grads = loss_and_grads(batches)
    for size in (2, 4):
        losses, grads = 0.0, [torch.zeros_like(p) for p in params]
        for r in range(size):
            loss, g = loss_and_grads(shard(batches, r, size))
            losses += loss
            grads = [a + b for a, b in zip(grads, g, strict=True)]
        assert losses == pytest.approx(whole, rel=1e-5)
        for a, b in zip(grads, whole_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

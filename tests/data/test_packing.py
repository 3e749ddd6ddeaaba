"""Packed batches train exactly like the same examples unpacked (tiny Llama, float32, CPU).

transformers would detect packing from restarting position_ids only when no
attention mask is given and no cache exists; a training forward with the
config's `use_cache=True` creates one, so JobData builds the block-diagonal
mask itself. These tests run the model in train mode to cover that path.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import torch
from data_helpers import chat, write_jsonl

from finetuned.data import Batch, JobData, prepare


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    root = tmp_path_factory.mktemp("packing")
    records = []
    for i in range(24):
        turns = [
            ("user", f"Question {i}? " + "more " * (i % 9)),
            ("assistant", f"Answer {i}." + " yes" * (i % 6)),
        ]
        if i % 3 == 0:
            turns = [("system", "Be brief."), *turns, ("user", "And?"), ("assistant", "Done " * (i % 4 + 1))]
        records.append(chat(*turns))
    prepare(write_jsonl(root / "data.jsonl", records), root / "out", tokenizer, None, 256)
    return root / "out"


def open_data(out: Path, tokenizer: Any, packing: bool) -> JobData:
    return JobData.open(
        out,
        batch_size=3,
        grad_accum=1,
        epochs=1,
        max_steps=None,
        max_seq_len=256,
        packing=packing,
        holdout_fraction=0.0,
        max_holdout=0,
        seed=3,
        pad_id=tokenizer.pad_token_id,
    )


def summed_loss(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    labels = inputs.pop("labels")
    logits = model(**inputs).logits.float()
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum"
    )


def segments(batch: Batch) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in a packed batch, from where position_ids restart."""
    out = []
    for r in range(batch.input_ids.shape[0]):
        starts = [*(batch.position_ids[r] == 0).nonzero().flatten().tolist(), batch.input_ids.shape[1]]
        out += [(r, a, b) for a, b in itertools.pairwise(starts) if (batch.labels[r, a:b] != -100).any()]
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss(prepared: Path, tokenizer: Any, model_dir: Path, attn: str) -> None:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation=attn)
    model.train()  # dropout is 0 in this config; train mode is what the trainer runs
    data = open_data(prepared, tokenizer, packing=True)
    checked = 0
    with torch.no_grad():
        for step in range(data.total_steps):
            for batch in data.step_batches(step):
                packed = summed_loss(model, batch.model_inputs(torch.float32 if attn == "eager" else None))
                alone = torch.zeros(())
                for r, a, b in segments(batch):
                    alone += summed_loss(
                        model,
                        {
                            "input_ids": batch.input_ids[r : r + 1, a:b],
                            "labels": batch.labels[r : r + 1, a:b],
                        },
                    )
                assert abs(packed.item() - alone.item()) / batch.n_loss_tokens < 1e-5
                checked += len(segments(batch))
    assert checked == 24


def test_packed_mean_loss_equals_padded_mean_loss(prepared: Path, tokenizer: Any, model_dir: Path) -> None:
    """Over a whole epoch, sum of token losses / loss tokens agrees between packed and padded batching."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    totals = {}
    with torch.no_grad():
        for packing in (True, False):
            data = open_data(prepared, tokenizer, packing)
            loss, tokens = 0.0, 0
            for step in range(data.total_steps):
                for batch in data.step_batches(step):
                    loss += summed_loss(model, batch.model_inputs()).item()
                    tokens += batch.n_loss_tokens
            totals[packing] = (loss / tokens, tokens)
    assert totals[True][1] == totals[False][1]
    assert abs(totals[True][0] - totals[False][0]) < 1e-5


def test_every_packed_segment_is_masked_and_positioned(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, packing=True)
    unpacked = {}
    padded = open_data(prepared, tokenizer, packing=False)
    for step in range(padded.total_steps):
        for batch in padded.step_batches(step):
            for r in range(batch.input_ids.shape[0]):
                n = int(batch.attention_mask[r].sum())
                unpacked[tuple(batch.input_ids[r, :n].tolist())] = batch.labels[r, :n]
    seen = 0
    for step in range(data.total_steps):
        for batch in data.step_batches(step):
            mask = batch.attention_mask
            assert mask.dtype == torch.bool and mask.shape[1] == 1
            for r, a, b in segments(batch):
                ids = tuple(batch.input_ids[r, a:b].tolist())
                assert torch.equal(batch.labels[r, a:b], unpacked[ids]), "labels match the unpacked example"
                assert batch.labels[r, a] == -100, "an example's first token is never a target"
                assert torch.equal(batch.position_ids[r, a:b], torch.arange(b - a))
                block = mask[r, 0, a:b]
                assert torch.equal(block[:, a:b], torch.ones(b - a, b - a, dtype=torch.bool).tril())
                assert not block[:, :a].any() and not block[:, b:].any(), "no attention across examples"
                seen += 1
            assert batch.n_tokens == sum(b - a for _, a, b in segments(batch))
    assert seen == 24

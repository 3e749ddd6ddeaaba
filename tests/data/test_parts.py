"""A step's rows shared among ranks (data/loader.py `part`): the shares add up to the whole step, loss and all,
whatever the objective and however an out-of-memory split cuts them."""

from __future__ import annotations

import pytest
import torch
from helpers import chat_lines, tiny_config, write_jsonl

from finetuned.config import PreferenceSettings
from finetuned.data import JobData, prepare
from finetuned.models.loading import add_lora, load_model, load_tokenizer
from finetuned.worker.objectives import SFT, SimPO
from finetuned.worker.step import accumulate


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    torch.manual_seed(0)
    config = tiny_config()
    model = add_lora(load_model(tiny_model_dir, "lora", torch.device("cpu")), config.lora)
    model.eval()  # no dropout: the shares must compute exactly what the whole does
    return model, load_tokenizer(tiny_model_dir)


def job_data(tmp_path, tokenizer, records, packing: bool, batch_size: int = 5) -> JobData:
    config = tiny_config(batch_size=batch_size, grad_accum=2)
    config.data.packing = packing
    out = tmp_path / ("packed" if packing else "padded")
    prepare(write_jsonl(tmp_path / "d.jsonl", records), out, tokenizer, config.data, 128)
    return JobData.open(out, batch_size=batch_size, grad_accum=2, epochs=1, max_steps=None, max_seq_len=128,
                        packing=packing, holdout_fraction=0.0, max_holdout=0, seed=3, pad_id=tokenizer.pad_token_id)


def pairs(n: int) -> list[dict]:
    return [{"prompt": f"Item {i}?", "chosen": f"Item {i}. Done" + " well" * (i % 4), "rejected": f"Item {i}. Nope."}
            for i in range(n)]


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("size", [2, 3, 4])
@pytest.mark.parametrize("split", [1, 2])
def test_shares_hold_every_example_once_and_every_rank_makes_the_same_passes(tmp_path, tiny, packing, size, split):
    _, tokenizer = tiny
    data = job_data(tmp_path, tokenizer, chat_lines(37), packing)
    for step in range(data.total_steps):
        whole = data.step_batches(step)
        shares = [data.step_batches(step, split, (r, size)) for r in range(size)]
        assert len({len(s) for s in shares}) == 1, "as many passes on every rank"
        for name in ("n_loss_tokens", "n_tokens", "n_examples"):
            assert sum(getattr(b, name) for s in shares for b in s) == sum(getattr(b, name) for b in whole)
        rows = max(b.input_ids.size(0) for s in shares for b in s)
        assert rows <= data.rows_per_batch(split, size)


@pytest.mark.parametrize("packing", [True, False])
def test_a_pair_is_never_cut_between_ranks(tmp_path, tiny, packing):
    _, tokenizer = tiny
    data = job_data(tmp_path, tokenizer, pairs(23), packing, batch_size=3)
    for step in range(data.total_steps):
        seen = []
        for r in range(2):
            for batch in data.step_batches(step, 2, (r, 2)):
                if not batch.n_examples:
                    continue  # a pass that counts nothing
                pairs_here = {(int(e), int(s)) for e, s in zip(batch.examples, batch.slots, strict=True)}
                examples = {e for e, _ in pairs_here}
                assert pairs_here == {(e, s) for e in examples for s in (0, 1)}, "chosen and rejected together"
                seen += sorted(examples)
        whole = sorted(e for b in data.step_batches(step) for e in set(b.examples.tolist()))
        assert sorted(seen) == whole


@pytest.mark.parametrize("records,objective", [(chat_lines(37), SFT()), (pairs(23), SimPO(PreferenceSettings()))],
                         ids=["sft", "simpo"])
@pytest.mark.parametrize("packing", [True, False])
def test_the_shares_losses_and_gradients_sum_to_the_whole(tmp_path, tiny, records, objective, packing):
    """What makes 1, 2 or 4 ranks train alike (the step divides by the whole step's units on every rank). ORPO's NLL
    and KTO's KL are means over a micro-batch: theirs change a little with how a step is cut, as with an OOM split."""
    model, tokenizer = tiny
    data = job_data(tmp_path, tokenizer, records, packing, batch_size=3)
    params = [p for p in model.parameters() if p.requires_grad]
    whole = data.step_batches(0)
    units = sum(objective.units(b) for b in whole)

    def loss_and_grads(batches):
        model.zero_grad(set_to_none=True)
        loss, _ = accumulate(model, batches, objective, units)
        return loss.item(), [p.grad.clone() for p in params]

    expected, expected_grads = loss_and_grads(whole)
    for size, split in ((2, 1), (4, 1), (2, 2)):
        losses, grads = 0.0, [torch.zeros_like(p) for p in params]
        for r in range(size):
            loss, g = loss_and_grads(data.step_batches(0, split, (r, size)))
            losses += loss
            grads = [a + b for a, b in zip(grads, g, strict=True)]
        assert losses == pytest.approx(expected, rel=1e-5)
        for a, b in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

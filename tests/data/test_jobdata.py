"""JobData: holdout, epochs, step arithmetic, and the batches a trainer receives."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from data_helpers import chat, write_jsonl

from finetuned.data import JobData, prepare

END = "<|im_end|>"


@pytest.fixture
def prepared(tmp_path: Path, tokenizer: Any) -> Path:
    """37 chat examples of varied length; the answer names the example so batches can be traced."""
    records = [
        chat(("user", f"Question {i}: " + "why " * (i % 7)), ("assistant", f"Answer {i}." + " ok" * (i % 5)))
        for i in range(37)
    ]
    prepare(write_jsonl(tmp_path / "data.jsonl", records), tmp_path / "out", tokenizer, None, 128)
    return tmp_path / "out"


def open_data(out: Path, tokenizer: Any, **overrides: Any) -> JobData:
    options = dict(
        batch_size=4,
        grad_accum=3,
        epochs=2,
        max_steps=None,
        max_seq_len=128,
        packing=False,
        holdout_fraction=0.0,
        max_holdout=200,
        seed=7,
        pad_id=tokenizer.pad_token_id,
    )
    return JobData.open(out, **{**options, **overrides})


def examples_of(batch: Any) -> list[tuple[int, ...]]:
    """Each example in a batch as its tuple of real token ids (padded or packed)."""
    out = []
    for r in range(batch.input_ids.shape[0]):
        if batch.position_ids is None:
            n = int(batch.attention_mask[r].sum())
            out.append(tuple(batch.input_ids[r, :n].tolist()))
            continue
        starts = [*(batch.position_ids[r] == 0).nonzero().flatten().tolist(), batch.input_ids.shape[1]]
        for a, b in itertools.pairwise(starts):
            if (batch.labels[r, a:b] != -100).any():  # the padding segment has none
                out.append(tuple(batch.input_ids[r, a:b].tolist()))
    return out


def all_steps(data: JobData) -> list[list[Any]]:
    return [data.step_batches(s) for s in range(data.total_steps)]


def test_step_arithmetic_without_packing(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer)
    # 37 examples / 4 per micro-batch = 10 micro-batches; / 3 per step = 4 steps; 2 epochs.
    assert (data.n_examples, data.n_train, data.n_holdout, data.total_steps) == (37, 37, 0, 8)
    steps = all_steps(data)
    assert [len(s) for s in steps] == [3, 3, 3, 1] * 2, "the last step of an epoch holds what is left"
    assert steps[3][0].n_examples == 1
    assert sum(b.n_examples for s in steps for b in s) == 74


def test_every_example_trains_once_per_epoch(prepared: Path, tokenizer: Any) -> None:
    for packing in (False, True):
        data = open_data(prepared, tokenizer, packing=packing, epochs=2)
        epochs: list[Counter[tuple[int, ...]]] = [Counter(), Counter()]
        for s in range(data.total_steps):
            for batch in data.step_batches(s):
                epochs[data.epoch_of(s)].update(examples_of(batch))
        assert epochs[0] == epochs[1] and sum(epochs[0].values()) == 37, f"packing={packing}"


def test_epochs_are_shuffled_differently_and_seeds_matter(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, grad_accum=1)
    first_epoch = [examples_of(data.step_batches(s)[0]) for s in range(10)]
    second_epoch = [examples_of(data.step_batches(s)[0]) for s in range(10, 20)]
    assert first_epoch != second_epoch
    other = open_data(prepared, tokenizer, grad_accum=1, seed=8)
    assert first_epoch != [examples_of(other.step_batches(s)[0]) for s in range(10)]


def test_steps_are_a_pure_function_of_seed_and_step(prepared: Path, tokenizer: Any) -> None:
    """What exact resume rests on: a fresh open, asked out of order, gives the same batches."""
    for packing in (False, True):
        a = open_data(prepared, tokenizer, packing=packing)
        b = open_data(prepared, tokenizer, packing=packing)
        for s in reversed(range(a.total_steps)):
            for x, y in zip(a.step_batches(s), b.step_batches(s), strict=True):
                assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)


def test_max_steps_caps_total_steps(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, max_steps=5)
    assert data.total_steps == 5
    with pytest.raises(IndexError):
        data.step_batches(5)
    assert open_data(prepared, tokenizer, max_steps=1000).total_steps == 8


def test_holdout_is_seeded_capped_and_never_trained(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, holdout_fraction=0.2, packing=True)
    assert (data.n_holdout, data.n_train) == (7, 30)
    held = Counter(e for batch in data.holdout_batches() for e in examples_of(batch))
    trained = Counter(e for s in range(data.total_steps) for b in data.step_batches(s) for e in examples_of(b))
    assert sum(held.values()) == 7 and not set(held) & set(trained)
    again = open_data(prepared, tokenizer, holdout_fraction=0.2)
    assert np.array_equal(again.holdout_ids, data.holdout_ids)
    assert open_data(prepared, tokenizer, holdout_fraction=0.2, max_holdout=3).n_holdout == 3


def test_few_examples_get_no_holdout(tmp_path: Path, tokenizer: Any) -> None:
    records = [chat(("user", f"q{i}"), ("assistant", f"a{i}")) for i in range(19)]
    prepare(write_jsonl(tmp_path / "d.jsonl", records), tmp_path / "out", tokenizer, None, 128)
    data = open_data(tmp_path / "out", tokenizer, holdout_fraction=0.5)
    assert (data.n_holdout, data.n_train, list(data.holdout_batches())) == (0, 19, [])


def test_padded_batch_keeps_the_end_of_turn_label_although_pad_equals_eos(prepared: Path, tokenizer: Any) -> None:
    batch = open_data(prepared, tokenizer).step_batches(0)[0]
    assert batch.position_ids is None and batch.attention_mask.shape == batch.input_ids.shape
    for r in range(batch.input_ids.shape[0]):
        n = int(batch.attention_mask[r].sum())
        trained = batch.labels[r, :n][batch.labels[r, :n] != -100].tolist()
        assert tokenizer.decode(trained).endswith(END), "the answer's end-of-turn token is trained"
        assert (batch.labels[r, n:] == -100).all() and (batch.input_ids[r, n:] == tokenizer.pad_token_id).all()
    assert batch.n_tokens == int(batch.attention_mask.sum())
    assert batch.n_loss_tokens == int((batch.labels != -100).sum())


def test_packed_rows_fit_max_seq_len(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, packing=True, max_seq_len=128)
    for s in range(data.total_steps):
        for batch in data.step_batches(s):
            assert batch.input_ids.shape[1] <= 128 and batch.input_ids.shape[0] <= 4
    assert data.total_steps < open_data(prepared, tokenizer).total_steps, "packing makes fewer steps"


def test_holdout_examples_split_prompt_and_answer(prepared: Path, tokenizer: Any) -> None:
    data = open_data(prepared, tokenizer, holdout_fraction=0.2)
    previews = data.holdout_examples(2)
    assert len(previews) == 2
    for prompt, answer in previews:
        assert tokenizer.decode(prompt).endswith("<|im_start|>assistant\n")
        assert tokenizer.decode(answer).startswith("Answer ") and tokenizer.decode(answer).endswith(END)


def test_open_refuses_a_shorter_max_seq_len_than_prepared(prepared: Path, tokenizer: Any) -> None:
    with pytest.raises(ValueError, match="prepare it again"):
        open_data(prepared, tokenizer, max_seq_len=16)

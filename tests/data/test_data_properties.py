"""Property tests: random conversations through prepare and JobData.

The reference spans come from an independent, slow method (rendering each
prefix of the conversation with the chat template), not from the code under test.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
from data_helpers import read_prepared, write_jsonl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from finetuned.data import JobData, prepare

# Pieces that stress rendering and tokenisation: whitespace at the edges (it merges
# with the template's newline), special-token text inside content, multi-byte characters.
TEXT = st.lists(
    st.one_of(
        st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Co")), max_size=6),
        st.sampled_from([" ", "\n", "  ", "<|im_end|>", "<|im_start|>assistant\n", "é", "日本", "🙂"]),
    ),
    max_size=6,
).map("".join)
ROLE = st.sampled_from(["user", "assistant", "tool", "system"])


@st.composite
def conversations(draw: Any) -> dict[str, Any]:
    turns = draw(st.lists(st.tuples(ROLE, TEXT), min_size=1, max_size=6))
    at = draw(st.integers(0, len(turns)))
    turns.insert(at, ("assistant", draw(TEXT)))  # at least one answer
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def reference_spans(tokenizer: Any, messages: list[dict[str, str]]) -> list[tuple[int, int]]:
    """Char range of each answer plus its <|im_end|>: the end of the prefix rendered up to it,
    less the answer and its ChatML closing "<|im_end|>\n"."""
    spans = []
    for i, m in enumerate(messages):
        if m["role"] == "assistant":
            end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)) - 1
            spans.append((end - len("<|im_end|>") - len(m["content"]), end))
    return spans


FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(records=st.lists(conversations(), min_size=1, max_size=4))
def test_every_loss_token_lies_inside_an_answer(tokenizer: Any, records: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_jsonl(Path(tmp) / "data.jsonl", records)
        prepare(path, Path(tmp) / "out", tokenizer, None, 4096)
        prepared = read_prepared(Path(tmp) / "out")
    assert len(prepared) == len(records)
    for record, (ids, mask) in zip(records, prepared, strict=True):
        text = tokenizer.apply_chat_template(record["messages"], tokenize=False)
        encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        assert encoding["input_ids"] == ids.tolist(), "prepared tokens are the rendered text's tokens"
        spans = reference_spans(tokenizer, record["messages"])
        for t, (start, end) in enumerate(encoding["offset_mapping"]):
            # Trained exactly when the token starts inside an answer (a token that starts
            # in the prompt, like a newline merged with an answer's leading space, is not).
            expected = t > 0 and any(a <= start < b for a, b in spans)
            assert mask[t] == expected, f"token {t} {text[start:end]!r}: mask {mask[t]}, spans {spans}"
            if mask[t]:
                assert any(a <= start and end <= b for a, b in spans), "a trained token ends inside its answer"
        if record["messages"][-1]["role"] == "assistant":
            assert mask[-2] == 1 and ids[-2] == tokenizer.eos_token_id, "the final <|im_end|> is trained"


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(-(2**40), 2**40),
    batch_size=st.integers(1, 5),
    grad_accum=st.integers(1, 3),
    epochs=st.integers(1, 3),
    packing=st.booleans(),
    fraction=st.sampled_from([0.0, 0.1, 0.3]),
)
def test_step_batches_are_deterministic_across_fresh_opens(
    prepared_for_properties: Path,
    tokenizer: Any,
    seed: int,
    batch_size: int,
    grad_accum: int,
    epochs: int,
    packing: bool,
    fraction: float,
) -> None:
    def fresh() -> JobData:
        return JobData.open(
            prepared_for_properties,
            batch_size=batch_size,
            grad_accum=grad_accum,
            epochs=epochs,
            max_steps=None,
            max_seq_len=128,
            packing=packing,
            holdout_fraction=fraction,
            max_holdout=200,
            seed=seed,
            pad_id=tokenizer.pad_token_id,
        )

    a, b = fresh(), fresh()
    assert a.total_steps == b.total_steps
    trained = 0
    for step in reversed(range(a.total_steps)):
        batches_a, batches_b = a.step_batches(step), b.step_batches(step)
        assert 1 <= len(batches_a) <= grad_accum
        for x, y in zip(batches_a, batches_b, strict=True):
            assert torch.equal(x.input_ids, y.input_ids) and torch.equal(x.labels, y.labels)
            trained += x.n_examples
    assert trained == a.n_train * epochs

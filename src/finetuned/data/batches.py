"""Turn prepared examples into model-ready tensors: padded, or packed into rows.

Labels are the tokens where the prepared loss mask is 1 and -100 elsewhere,
unshifted (Hugging Face causal LM heads shift them). They come from the mask,
never from `input_ids == pad_token_id`: with pad == EOS that would hide every
end-of-turn token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np
import torch

IGNORE = -100


@dataclass
class Batch:
    """One micro-batch.

    Padded: `attention_mask` is [B, L] (1 = real token), `position_ids` None.
    Packed: several examples share a row; `position_ids` restart at 0 for each,
    and `attention_mask` is a [B, 1, L, L] boolean block-diagonal causal mask
    (True = may attend), so no example sees another. Passed as-is to
    transformers (a 4D mask skips its own mask building). Hugging Face would
    detect packing from `position_ids` only when the mask is None *and* no
    cache exists, and a training forward with `use_cache=True` (the config
    default) creates one: relying on that detection lets examples attend to
    each other silently. sdpa takes the boolean mask; eager attention needs an
    additive one: `model_inputs(dtype)` converts.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None
    position_ids: torch.Tensor | None
    n_loss_tokens: int
    n_tokens: int  # real tokens, padding excluded
    n_examples: int
    # Packed: per row, (start, end) of each example and of the padding; models/attention.py
    # attends within each instead of through the mask.
    segments: list[list[tuple[int, int]]] | None = None
    # Objectives that score whole sequences (preferences): per token, the index of its sequence in the
    # batch (in the order the batch was asked for), -1 on padding.
    sequence_ids: torch.Tensor | None = None
    n_sequences: int = 0

    def to(self, device: torch.device | str) -> Batch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, value in moved.items():
            if isinstance(value, torch.Tensor):
                moved[name] = value.to(device, non_blocking=True)
        return Batch(**moved)

    def model_inputs(self, dtype: torch.dtype | None = None) -> dict[str, Any]:
        """Keyword arguments for `model(**inputs)`, labels included.

        With `dtype` a 4D boolean mask becomes additive (0 / dtype's min), the form
        eager attention needs; sdpa accepts either.
        """
        mask = self.attention_mask
        if dtype is not None and mask is not None and mask.dim() == 4:
            zero = torch.zeros((), dtype=dtype, device=mask.device)
            mask = torch.where(mask, zero, torch.finfo(dtype).min)
        inputs = {"input_ids": self.input_ids, "labels": self.labels, "attention_mask": mask}
        if self.position_ids is not None:
            inputs["position_ids"] = self.position_ids
        return inputs


class ExampleStore:
    """Read access to one prepared folder's arrays, memory-mapped: pages load on demand."""

    def __init__(self, tokens: np.ndarray, mask: np.ndarray, offsets: np.ndarray) -> None:
        self.tokens, self.mask, self.offsets = tokens, mask, offsets
        self.lengths = np.diff(offsets)

    def example(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        return np.asarray(self.tokens[start:end], dtype=np.int64), np.asarray(self.mask[start:end])


def pack_rows(lengths: np.ndarray, capacity: int) -> np.ndarray:
    """Start index of each row when examples, in this order, fill rows of `capacity` tokens.

    Next-fit keeps the epoch's shuffled order, so a step's content depends only
    on (seed, epoch), and an example is never split across rows.
    """
    starts: list[int] = []
    used = capacity  # forces a first row
    for i, n in enumerate(lengths.tolist()):
        if used + n > capacity:
            starts.append(i)
            used = 0
        used += n
    return np.asarray(starts, dtype=np.int64)


def padded_batch(store: ExampleStore, ids: Sequence[int], pad_id: int, sequences: bool = False) -> Batch:
    examples = [store.example(i) for i in ids]
    width = max(len(t) for t, _ in examples)
    input_ids = np.full((len(examples), width), pad_id, dtype=np.int64)
    labels = np.full((len(examples), width), IGNORE, dtype=np.int64)
    attention = np.zeros((len(examples), width), dtype=np.int64)
    for row, (tokens, mask) in enumerate(examples):
        n = len(tokens)
        input_ids[row, :n] = tokens
        labels[row, :n] = np.where(mask == 1, tokens, IGNORE)
        attention[row, :n] = 1
    batch = _finish(input_ids, labels, torch.from_numpy(attention), None, int(attention.sum()), len(examples))
    if sequences:
        rows = np.arange(len(examples), dtype=np.int64)[:, None].repeat(width, axis=1)
        batch.sequence_ids = torch.from_numpy(np.where(attention == 1, rows, -1))
        batch.n_sequences = len(examples)
    return batch


def packed_batch(store: ExampleStore, rows: Sequence[Sequence[int]], pad_id: int, sequences: bool = False) -> Batch:
    width = max(int(store.lengths[list(row)].sum()) for row in rows)
    shape = (len(rows), width)
    input_ids = np.full(shape, pad_id, dtype=np.int64)
    labels = np.full(shape, IGNORE, dtype=np.int64)
    positions = np.zeros(shape, dtype=np.int64)
    segments = np.zeros(shape, dtype=np.int64)
    sequence_ids = np.full(shape, -1, dtype=np.int64)
    n_examples = n_tokens = 0
    spans: list[list[tuple[int, int]]] = []
    for r, row in enumerate(rows):
        col = 0
        spans.append([])
        for seg, i in enumerate(row):
            tokens, mask = store.example(i)
            n = len(tokens)
            input_ids[r, col : col + n] = tokens
            labels[r, col : col + n] = np.where(mask == 1, tokens, IGNORE)
            positions[r, col : col + n] = np.arange(n)
            segments[r, col : col + n] = seg
            sequence_ids[r, col : col + n] = n_examples + seg
            spans[r].append((col, col + n))
            col += n
        # Padding is a segment of its own: its rows of the mask are never all False (sdpa would give NaN).
        n_tokens += col
        positions[r, col:] = np.arange(width - col)
        segments[r, col:] = len(row)
        if col < width:
            spans[r].append((col, width))
        n_examples += len(row)
    seg = torch.from_numpy(segments)
    causal = torch.ones(width, width, dtype=torch.bool).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    batch = _finish(input_ids, labels, mask[:, None], torch.from_numpy(positions), n_tokens, n_examples)
    batch.segments = spans
    if sequences:
        batch.sequence_ids, batch.n_sequences = torch.from_numpy(sequence_ids), n_examples
    return batch


@dataclass
class PreferenceBatch:
    """One micro-batch of preference examples: the sequences that train, and what the loss needs beside them.

    Pairs: `policy` holds chosen and rejected of each pair, side by side (packing keeps a pair in one
    row). Labelled answers (KTO): `policy` holds each answer after its prompt, and `kl` the same prompts
    with other examples' answers, which the loss runs without gradient to estimate the KL term.
    """

    policy: Batch  # its `sequence_ids` number the sequences in the order of `examples`
    examples: np.ndarray  # per policy sequence: its example's id (reference log-probs are kept by it)
    slots: np.ndarray  # per policy sequence: 0 the chosen (or judged) answer, 1 the rejected one
    n_examples: int
    desirable: np.ndarray | None = None  # labelled answers: per policy sequence, True for a good one
    kl: Batch | None = None  # labelled answers: in the order of `examples`

    @property
    def n_tokens(self) -> int:
        return self.policy.n_tokens

    @property
    def n_loss_tokens(self) -> int:
        return self.policy.n_loss_tokens


def _finish(
    input_ids: np.ndarray,
    labels: np.ndarray,
    attention: torch.Tensor,
    positions: torch.Tensor | None,
    n_tokens: int,
    n_examples: int,
) -> Batch:
    n_loss = int((labels != IGNORE).sum())
    return Batch(
        torch.from_numpy(input_ids),
        torch.from_numpy(labels),
        attention,
        positions,
        n_loss,
        n_tokens,
        n_examples,
    )


def idle(batch: Batch | PreferenceBatch) -> Batch | PreferenceBatch:
    """The same rows, counting nothing: a pass the step weighs by zero (a rank without rows there)."""
    if isinstance(batch, PreferenceBatch):
        return replace(batch, n_examples=0)
    return replace(batch, n_loss_tokens=0, n_tokens=0, n_examples=0)

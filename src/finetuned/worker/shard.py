"""A step's rows split across ranks: each rank trains a fixed part of every micro-batch.

Rank r of R takes the r-th of R near-equal runs of each micro-batch's rows
(`numpy.array_split`). With every micro-batch's loss divided by the units of
the whole step (not of the rank's part) and the gradients summed over the
ranks, optimizer step N gets the update a single process computes, on 1, 2 or
4 ranks alike. A part keeps its micro-batch's row length, so each row is
computed exactly as it is in the whole batch.

A rank left without a row of some micro-batch (the short last micro-batch of
an epoch, on many ranks) trains that batch's last row with every label
ignored: no loss and a zero gradient, but the same number of forward and
backward passes on every rank, which sharded models need (each pass gathers
the weights from all ranks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import torch

from finetuned.data.batches import IGNORE, Batch


def rows_of(n_rows: int, rank: int, size: int) -> np.ndarray:
    """The rows (indices) of an `n_rows` micro-batch that `rank` of `size` trains; may be empty."""
    return np.array_split(np.arange(n_rows), size)[rank]


def shard(batches: Sequence[Batch], rank: int, size: int) -> list[Batch]:
    """`rank`'s part of each micro-batch, one part per micro-batch."""
    out = []
    for batch in batches:
        rows = rows_of(batch.input_ids.size(0), rank, size)
        out.append(take_rows(batch, rows) if len(rows) else without_loss(take_rows(batch, np.array([-1]))))
    return out


def take_rows(batch: Batch, rows: np.ndarray) -> Batch:
    index = torch.from_numpy(np.asarray(rows, dtype=np.int64) % batch.input_ids.size(0))
    labels = batch.labels[index]
    mask = None if batch.attention_mask is None else batch.attention_mask[index]
    segments = None if batch.segments is None else [batch.segments[int(i)] for i in index]
    if segments is None:  # padded rows: the attention mask marks the real tokens
        n_tokens = int(mask.sum()) if mask is not None else int(labels.numel())
        n_examples = len(index)
    else:  # packed rows: a span is an example when it carries loss (examples without any are dropped
        # when the file is prepared); the trailing padding span never does
        spans = [(r, a, b) for r, row in enumerate(segments) for a, b in row if (labels[r, a:b] != IGNORE).any()]
        n_tokens = sum(b - a for _, a, b in spans)
        n_examples = len(spans)
    return replace(
        batch, input_ids=batch.input_ids[index], labels=labels, attention_mask=mask,
        position_ids=None if batch.position_ids is None else batch.position_ids[index],
        n_loss_tokens=int((labels != IGNORE).sum()), n_tokens=n_tokens, n_examples=n_examples, segments=segments,
    )


def without_loss(batch: Batch) -> Batch:
    """The same rows with no label trained: a pass that changes nothing."""
    return replace(batch, labels=torch.full_like(batch.labels, IGNORE), n_loss_tokens=0, n_tokens=0, n_examples=0)

"""The trainer's view of a prepared job: which batches make optimizer step N.

Every batch is a pure function of (seed, step): the holdout split, each
epoch's shuffle (`default_rng([seed, epoch])`) and the packing of that order
are recomputed from them, never carried as state. A resumed job asks for step
N and gets exactly the batches an uninterrupted run would have seen, with no
sampler position to save.

An example is one sequence, or two for preference data (its sequences adjacent
in the arrays): splits, shuffles and rows count examples, so a pair is never
cut across rows or steps, and `batch_size` counts examples (or packed rows).

Tokens stay in memory-mapped files; in RAM are only the per-example offsets and
one epoch's order (8 bytes per example each).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetuned.data.batches import Batch, ExampleStore, PreferenceBatch, idle, pack_rows, packed_batch, padded_batch
from finetuned.data.examples import PREFERENCE, SFT, UNPAIRED
from finetuned.data.tokenize import LABELS, MASK, OFFSETS, TOKENS, load_meta

log = logging.getLogger(__name__)

# Below this many examples a holdout would be noise and would starve training.
MIN_EXAMPLES_FOR_HOLDOUT = 20
_HOLDOUT_STREAM = 0x686F6C64  # a SeedSequence word no epoch number reaches ("hold")


@dataclass(frozen=True)
class _Plan:
    """One epoch: example ids in order, and where each row (packed) or example (padded) starts."""

    order: np.ndarray
    row_starts: np.ndarray

    @property
    def n_rows(self) -> int:
        return len(self.row_starts)

    def row(self, r: int) -> np.ndarray:
        end = self.row_starts[r + 1] if r + 1 < len(self.row_starts) else len(self.order)
        return self.order[self.row_starts[r] : end]


class JobData:
    """Batches for one job; build with `JobData.open`."""

    def __init__(
        self,
        store: ExampleStore,
        meta: dict[str, Any],
        *,
        batch_size: int,
        grad_accum: int,
        epochs: int,
        max_steps: int | None,
        max_seq_len: int,
        packing: bool,
        holdout: np.ndarray,
        train: np.ndarray,
        seed: int,
        pad_id: int,
        labels: np.ndarray | None = None,
    ) -> None:
        self.store, self.meta = store, meta
        self.batch_size, self.grad_accum, self.epochs = batch_size, grad_accum, epochs
        self.max_seq_len, self.packing, self.seed, self.pad_id = max_seq_len, packing, seed, pad_id
        self.holdout_ids, self.train_ids = holdout, train
        self.form: str = meta.get("form", SFT)
        self.per_example: int = meta.get("sequences_per_example", 1)
        # An example's sequences lie side by side: its length is theirs together.
        self.lengths = store.lengths.reshape(-1, self.per_example).sum(axis=1)
        self.labels = labels
        self.n_examples = len(self.lengths)
        self.n_train, self.n_holdout = len(train), len(holdout)
        self._cached: tuple[int, _Plan] | None = None
        # Steps per epoch differ under packing (rows depend on the shuffle): count each.
        steps = [self._steps_in(self._plan(e)) for e in range(epochs)]
        self.epoch_first_step = np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)
        natural = int(self.epoch_first_step[-1])
        self.total_steps = min(natural, max_steps) if max_steps else natural

    @classmethod
    def open(
        cls,
        out_dir: Path,
        *,
        batch_size: int,
        grad_accum: int,
        epochs: int,
        max_steps: int | None,
        max_seq_len: int,
        packing: bool,
        holdout_fraction: float,
        max_holdout: int,
        seed: int,
        pad_id: int,
    ) -> JobData:
        out_dir = Path(out_dir)
        meta = load_meta(out_dir)
        if meta is None:
            raise FileNotFoundError(f"{out_dir} holds no prepared data (meta.json missing)")
        if meta["longest"] > max_seq_len:
            raise ValueError(
                f"{out_dir} was prepared for max_seq_len={meta['max_seq_len']}, "
                f"longer than {max_seq_len}: prepare it again"
            )
        if min(batch_size, grad_accum, epochs) < 1:
            raise ValueError("batch_size, grad_accum and epochs must be at least 1")
        offsets = np.load(out_dir / OFFSETS, mmap_mode="r")
        store = ExampleStore(
            np.memmap(out_dir / TOKENS, dtype=np.uint32, mode="r"),
            np.memmap(out_dir / MASK, dtype=np.uint8, mode="r"),
            offsets,
        )
        per_example = meta.get("sequences_per_example", 1)
        holdout, train = split_holdout((len(offsets) - 1) // per_example, holdout_fraction, max_holdout, seed)
        labels = np.load(out_dir / LABELS) if (out_dir / LABELS).exists() else None
        data = cls(
            store,
            meta,
            batch_size=batch_size,
            grad_accum=grad_accum,
            epochs=epochs,
            max_steps=max_steps,
            max_seq_len=max_seq_len,
            packing=packing,
            holdout=holdout,
            train=train,
            seed=seed,
            pad_id=pad_id,
            labels=labels,
        )
        log.info(
            "%s: %d examples (%d holdout), %d steps over %d epoch(s)%s",
            out_dir.name,
            data.n_examples,
            data.n_holdout,
            data.total_steps,
            epochs,
            ", packed" if packing else "",
        )
        return data

    def _rows(self, order: np.ndarray) -> np.ndarray:
        if self.packing:
            return pack_rows(self.lengths[order], self.max_seq_len)
        return np.arange(len(order), dtype=np.int64)

    def _plan(self, epoch: int) -> _Plan:
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        order = np.random.default_rng([_seed_word(self.seed), epoch]).permutation(self.train_ids)
        plan = _Plan(order, self._rows(order))
        self._cached = (epoch, plan)
        return plan

    def _steps_in(self, plan: _Plan) -> int:
        micro = -(-plan.n_rows // self.batch_size)
        return -(-micro // self.grad_accum)

    def _micro_batch(self, plan: _Plan, k: int) -> Batch | PreferenceBatch:
        return self._batch(plan, k * self.batch_size, min((k + 1) * self.batch_size, plan.n_rows))

    def _batch(self, plan: _Plan, start: int, end: int) -> Batch | PreferenceBatch:
        rows = [plan.row(r) for r in range(start, end)]
        if self.form != SFT:
            return self._preference_batch(rows)
        if self.packing:
            return packed_batch(self.store, rows, self.pad_id)
        return padded_batch(self.store, [int(r[0]) for r in rows], self.pad_id)

    def _preference_batch(self, rows: list[np.ndarray], together: bool = False) -> PreferenceBatch:
        """Pairs: chosen and rejected side by side in one batch. Labelled answers: the answers, and the KL
        sequences apart (`together`: every sequence in one batch, for reference log-probabilities)."""
        examples = np.concatenate(rows).astype(np.int64)
        if self.form == PREFERENCE or together:
            seq_rows = [(2 * row[:, None] + np.arange(2)).reshape(-1) for row in rows]
            order = np.concatenate(seq_rows)
            return PreferenceBatch(self._sequences(seq_rows), order // 2, order % 2, len(examples))
        assert self.form == UNPAIRED and self.labels is not None
        return PreferenceBatch(self._sequences([2 * row for row in rows]), examples, np.zeros_like(examples),
                               len(examples), desirable=self.labels[examples].astype(bool),
                               kl=self._sequences([2 * row + 1 for row in rows]))

    def _sequences(self, rows: list[np.ndarray]) -> Batch:
        if self.packing:
            return packed_batch(self.store, rows, self.pad_id, sequences=True)
        return padded_batch(self.store, np.concatenate(rows).tolist(), self.pad_id, sequences=True)

    def reference_batches(self) -> Iterator[PreferenceBatch]:
        """Every example, in id order, with all its sequences in one batch: for reference log-probabilities."""
        ids = np.arange(self.n_examples, dtype=np.int64)
        for start in range(0, len(ids), self.batch_size):
            plan = _Plan(ids[start : start + self.batch_size], self._rows(ids[start : start + self.batch_size]))
            yield self._preference_batch([plan.row(r) for r in range(plan.n_rows)], together=True)

    def step_batches(self, step: int, split: int = 1, part: tuple[int, int] = (0, 1)) -> list[Batch | PreferenceBatch]:
        """The grad_accum micro-batches of optimizer step `step` (0-based).

        The last step of an epoch may hold fewer micro-batches, and its last one
        fewer rows: weight the loss by `n_loss_tokens`, not by batch count.
        `split` > 1 cuts each micro-batch into that many smaller ones (after an out-of-memory):
        the step's rows, and so its loss, stay the same. `part` (rank, ranks): that rank's share (`_cut`).
        """
        plan, start, end = self._step_rows(step)
        return self._cut(plan, start, end, split, part)

    def rows_per_batch(self, split: int, ranks: int = 1) -> int:
        """Rows a micro-batch (of one rank's share, on `ranks`) holds after `split`."""
        share = -(-self.batch_size // ranks)
        return -(-share // split)

    def _cut(self, plan: _Plan, start: int, end: int, split: int, part: tuple[int, int]
             ) -> list[Batch | PreferenceBatch]:
        """Rows start..end in micro-batches. On several ranks (worker/ranks.py) rank r of R takes the r-th of R
        near-equal runs of each micro-batch's rows; a row holds whole examples, so a pair is never cut between
        ranks. `split` then cuts each rank's run, and every rank makes as many passes: one without rows of its
        own there gets an `idle` copy of another's (sharded weights are gathered in every pass, by every rank)."""
        rank, ranks = part
        size = self.rows_per_batch(split, ranks)
        if ranks == 1:
            return [self._batch(plan, r, min(r + size, end)) for r in range(start, end, size)]
        out: list[Batch | PreferenceBatch] = []
        for first in range(start, end, self.batch_size):
            runs = np.array_split(np.arange(first, min(first + self.batch_size, end)), ranks)
            for k in range(0, len(runs[0]), size):  # runs[0] is the longest
                rows = runs[rank][k : k + size]
                out.append(self._batch(plan, int(rows[0]), int(rows[-1]) + 1) if len(rows)
                           else idle(self._batch(plan, first, first + 1)))
        return out

    def _step_rows(self, step: int) -> tuple[_Plan, int, int]:
        if not 0 <= step < self.total_steps:
            raise IndexError(f"step {step} outside 0..{self.total_steps - 1}")
        epoch = self.epoch_of(step)
        plan = self._plan(epoch)
        first = (step - int(self.epoch_first_step[epoch])) * self.grad_accum * self.batch_size
        return plan, first, min(first + self.grad_accum * self.batch_size, plan.n_rows)

    def longest_in_step(self, step: int) -> tuple[int, int]:
        """(example id, tokens) of the step's longest example: what an out-of-memory report names."""
        plan, start, end = self._step_rows(step)
        examples = np.concatenate([plan.row(r) for r in range(start, end)]).astype(np.int64)
        lengths = self.lengths[examples]  # a pair's or a labelled answer's sequences together
        k = int(np.argmax(lengths))
        return int(examples[k]), int(lengths[k])

    def epoch_of(self, step: int) -> int:
        return int(np.searchsorted(self.epoch_first_step, step, side="right")) - 1

    def holdout_batches(self, split: int = 1, part: tuple[int, int] = (0, 1)) -> list[Batch | PreferenceBatch]:
        """The holdout examples, in a fixed order, batched the way training is (`split`, `part`: as
        `step_batches`)."""
        if not self.n_holdout:
            return []
        plan = _Plan(self.holdout_ids, self._rows(self.holdout_ids))
        return self._cut(plan, 0, plan.n_rows, split, part)

    def holdout_examples(self, n: int) -> list[tuple[list[int], list[int]]]:
        """(prompt ids, expected answer ids) of up to n holdout examples, for previews.

        The answer is the last trained run of tokens (the final assistant turn);
        for text, where everything trains, the second half of the document.
        """
        out = []
        for i in self.holdout_ids[:n]:
            tokens, mask = self.store.example(int(i) * self.per_example)  # a pair: its chosen answer
            trained = np.flatnonzero(mask)
            end = int(trained[-1]) + 1
            start = end
            while start > 0 and mask[start - 1]:
                start -= 1
            if start <= 1:
                start = len(tokens) // 2
            out.append((tokens[:start].tolist(), tokens[start:end].tolist()))
        return out


def _seed_word(seed: int) -> int:
    return seed & (2**64 - 1)  # SeedSequence takes non-negative words; configs may hold any int


def split_holdout(n: int, fraction: float, cap: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(holdout ids, train ids), both sorted; the holdout is seeded, `fraction` of n, at most `cap`."""
    if n < MIN_EXAMPLES_FOR_HOLDOUT or fraction <= 0 or cap <= 0:
        return np.empty(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    size = min(cap, max(1, round(n * fraction)))
    chosen = np.random.default_rng([_seed_word(seed), _HOLDOUT_STREAM]).choice(n, size=size, replace=False)
    is_holdout = np.zeros(n, dtype=bool)
    is_holdout[chosen] = True
    return np.flatnonzero(is_holdout), np.flatnonzero(~is_holdout)

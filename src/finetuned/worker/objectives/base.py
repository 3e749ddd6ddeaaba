"""The objective interface: a batch in, a loss sum and metric sums out.

A step's loss is a mean over the step's *units*: loss tokens for SFT (every
trained token weighs the same, however the step is cut into micro-batches),
examples for objectives defined per pair or per answer (DPO, KTO...). The step
asks each micro-batch's units before any forward pass, so each micro-batch's
backward is scaled by its share of the step, exactly as one big batch would be.

Metrics come as (sum, count) pairs, so a metric over part of a batch (KTO's
rewards of the good answers) averages over what it counts, across micro-batches.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch

Metrics = dict[str, tuple[torch.Tensor, float]]


class Objective(Protocol):
    name: ClassVar[str]

    def units(self, batch: Any) -> int:
        """How many units this micro-batch holds (loss tokens, examples...)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, Metrics]:
        """The sum over the batch's units of the loss (0-dim, differentiable), and (sum, count) of each metric."""
        ...

"""The objective interface: a batch in, a loss sum and metric sums out.

A step's loss is a mean over the step's *units*: loss tokens for SFT (every
trained token weighs the same, however the step is cut into micro-batches),
pairs or examples for objectives defined per sequence. The step asks each
micro-batch's units before any forward pass, so each micro-batch's backward is
scaled by its share of the step, exactly as one big batch would be.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol

import torch


class Objective(Protocol):
    name: ClassVar[str]

    def units(self, batch: Any) -> int:
        """How many units this micro-batch holds (loss tokens, pairs...)."""
        ...

    def loss(self, model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The sum over the batch's units of the loss (0-dim, differentiable), and sums of extra metrics."""
        ...

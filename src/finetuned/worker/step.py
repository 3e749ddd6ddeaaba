"""One optimizer step, shared by the recipe and the benchmarks (so they measure what users run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from finetuned.worker.objectives import Objective


def accumulate(model: torch.nn.Module, batches: Sequence[Any], objective: Objective,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backward over the step's micro-batches; returns the step's mean loss per unit and its mean metrics (0-dim)."""
    units = max(sum(objective.units(b) for b in batches), 1)
    total = torch.zeros((), device=next(model.parameters()).device)
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, float] = {}
    for batch in batches:
        # Each micro-batch weighs by its share of the step's units, as one big batch would.
        loss, extra = objective.loss(model, batch)
        loss = loss / units
        loss.backward()
        total += loss.detach()  # no .item() here: one device sync per step, not per micro-batch
        for name, (value, count) in extra.items():
            sums[name] = sums.get(name, 0) + value.detach()
            counts[name] = counts.get(name, 0.0) + count
    return total, {name: sums[name] / counts[name] for name in sums if counts[name]}


def update(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], lr: float,
           max_grad_norm: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

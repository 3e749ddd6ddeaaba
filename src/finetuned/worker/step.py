"""One optimizer step, shared by the recipe and the benchmarks (so they measure what users run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from finetuned.worker.objectives import Objective


def accumulate(model: torch.nn.Module, batches: Sequence[Any], objective: Objective, units: int | None = None,
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Backward over the step's micro-batches; returns the step's mean loss per unit and its mean metrics (0-dim).

    `units` is the whole step's when `batches` are one rank's part of it (worker/shard.py): each rank's
    result is then its share of the step's mean, and the shares sum to it.
    """
    units = max(sum(objective.units(b) for b in batches) if units is None else units, 1)
    total = torch.zeros((), device=next(model.parameters()).device)
    metrics: dict[str, torch.Tensor] = {}
    for batch in batches:
        # Each micro-batch weighs by its share of the step's units, as one big batch would.
        loss, extra = objective.loss(model, batch)
        loss = loss / units
        loss.backward()
        total += loss.detach()  # no .item() here: one device sync per step, not per micro-batch
        for name, value in extra.items():
            metrics[name] = metrics.get(name, 0) + value.detach() / units
    return total, metrics


def update(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], lr: float,
           max_grad_norm: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

"""One optimizer step, shared by the recipe and the benchmarks (so they measure what users run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from finetuned.models.precision import Precision, autocast
from finetuned.worker.objectives import Metrics, Objective


def accumulate(model: torch.nn.Module, batches: Sequence[Any], objective: Objective, units: int | None = None,
               precision: Precision = "fp32") -> tuple[torch.Tensor, Metrics]:
    """Backward over the step's micro-batches; returns the step's mean loss per unit (0-dim) and each metric's
    (sum, count) (`means` divides them).

    `units` is the whole step's when `batches` are one rank's part of it (data/loader.py `part`): each rank's
    loss is then its share of the step's mean, and the shares sum to it. A pass without units (a rank
    without rows there, data/batches.py `idle`) runs, for the passes to match on every rank, and counts nothing.
    In bf16 the forward and the loss run under autocast; the backward follows the dtypes they chose, outside it.
    """
    units = max(sum(objective.units(b) for b in batches) if units is None else units, 1)
    device = next(model.parameters()).device
    total = torch.zeros((), device=device)
    metrics: Metrics = {}
    for batch in batches:
        # Each micro-batch weighs by its share of the step's units, as one big batch would.
        with autocast(device, precision):
            loss, extra = objective.loss(model, batch)
        counted = objective.units(batch) > 0
        loss = loss / units if counted else loss * 0
        loss.backward()
        total += loss.detach()  # no .item() here: one device sync per step, not per micro-batch
        for name, (value, count) in extra.items() if counted else ():
            summed, seen = metrics.get(name, (0, 0.0))
            metrics[name] = (summed + value.detach(), seen + count)
    return total, metrics


def means(metrics: dict[str, tuple[float, float]]) -> dict[str, float]:
    """Each metric's mean over what it counted; one counted nowhere is left out."""
    return {name: float(value) / count for name, (value, count) in metrics.items() if count}


def update(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], lr: float,
           max_grad_norm: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

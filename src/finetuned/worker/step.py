"""One optimizer step, shared by the recipe and the benchmarks (so they measure what users run)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from finetuned.worker.loss import token_loss_sum


def accumulate(model: torch.nn.Module, batches: Sequence[Any]) -> torch.Tensor:
    """Backward over the step's micro-batches; returns the step's mean loss per loss token (0-dim)."""
    loss_tokens = max(sum(b.n_loss_tokens for b in batches), 1)
    total = torch.zeros((), device=next(model.parameters()).device)
    for batch in batches:
        # Each micro-batch weighs by its share of the step's loss tokens, as one big batch would.
        loss = token_loss_sum(model, batch) / loss_tokens
        loss.backward()
        total += loss.detach()  # no .item() here: one device sync per step, not per micro-batch
    return total


def update(optimizer: torch.optim.Optimizer, params: Sequence[torch.nn.Parameter], lr: float,
           max_grad_norm: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

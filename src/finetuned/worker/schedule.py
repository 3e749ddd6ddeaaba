"""The learning rate as a function of the step: a resumed job needs nothing but the step to continue it."""

from __future__ import annotations

from finetuned.config import TrainingSettings


def lr_at(step: int, training: TrainingSettings) -> float:
    """Linear warmup over the line's first `warmup_steps`, then constant."""
    warmup = training.warmup_steps
    scale = min(1.0, (step + 1) / warmup) if warmup else 1.0
    return training.learning_rate * scale

"""Early stopping: a job ends (completed, reason `early_stopped`) when its metric stops improving.

The state (best value, its step, measurements since) lives in `TrainingProgress`, so it is in every
checkpoint and a resumed job stops exactly where an uninterrupted one would. The metric is measured
before the checkpoint of its step is written, for the same reason.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from finetuned.checkpoints import TrainingProgress
from finetuned.config import EarlyStopping


@dataclass(frozen=True)
class Verdict:
    improved: bool  # a new best: its step's checkpoint is the one `evaluation.publish: best` takes
    stop: bool
    reason: str = ""


def observe(settings: EarlyStopping, progress: TrainingProgress, value: float | None) -> Verdict:
    """Record one measurement of the metric at `progress.step`; says whether it improved and whether to stop."""
    if value is None or not math.isfinite(value):
        return Verdict(False, False)
    best = progress.best_value
    sign = 1.0 if settings.lower_is_better else -1.0
    if best is None or sign * (best - value) > settings.min_delta:
        progress.best_value, progress.best_step, progress.stale_measurements = value, progress.step, 0
        return Verdict(True, False)
    progress.stale_measurements += 1
    if progress.stale_measurements < settings.patience:
        return Verdict(False, False)
    reason = (f"{settings.metric} has not improved by more than {settings.min_delta:g} for "
              f"{settings.patience} measurements (best {best:.4g} at step {progress.best_step})")
    return Verdict(False, True, reason)

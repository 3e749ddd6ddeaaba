"""The learning rate as a function of the step: a resumed job needs nothing but the step to continue it.

Warmup counts on the model line's step, so in continuous mode only the line's first
`warmup_steps` warm up, whichever jobs they fall in. After warmup the rate follows
`training.lr_scheduler` over the job's own steps: `constant`, or `cosine`/`linear` from
`learning_rate` down to `min_lr_ratio` x `learning_rate` at the job's last step. In
continuous mode each job is therefore one decay of the line (a restart per file, as in
SGDR), which keeps a job's schedule independent of whatever comes after it.
"""

from __future__ import annotations

import math

from finetuned.config import TrainingSettings


def lr_at(line_step: int, training: TrainingSettings, job_step: int = 0, total_steps: int = 0) -> float:
    """The rate of the step taken after `line_step` steps of the line, `job_step` of them in this job."""
    lr, warmup = training.learning_rate, training.warmup_steps
    if line_step < warmup:
        return lr * (line_step + 1) / warmup
    if training.lr_scheduler == "constant" or total_steps <= 0:
        return lr
    # The job's steps after the line's warmup ended: the decay runs over exactly these.
    warm_in_job = min(max(warmup - (line_step - job_step), 0), total_steps)
    span = max(total_steps - warm_in_job, 1)
    progress = min(max(job_step - warm_in_job, 0) / span, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * progress)) if training.lr_scheduler == "cosine" else 1.0 - progress
    floor = training.min_lr_ratio
    return lr * (floor + (1.0 - floor) * shape)

"""Reference log-probabilities, computed once per job before its first step and kept beside its tokens.

The reference is the model as the job starts: the base with a fresh adapter (LoRA, so the adapter adds
nothing yet), the model line's newest weights in continuous mode, the base itself for a full fine-tune.
Each sequence's summed log-probability is stored (`reference_logps.npy`, float32, [examples, 2]: 8 bytes
an example), so training, resume and preemption never run the reference again and a full fine-tune
needs no frozen copy in memory. Computing it costs one forward pass over the data (about a third of an
epoch of training).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np
import torch

from finetuned.data import JobData
from finetuned.models.precision import Precision, autocast
from finetuned.worker.loss import sequence_logps

log = logging.getLogger(__name__)

REFERENCE = "reference_logps.npy"


def reference_logps(model: torch.nn.Module, data: JobData, folder: Path, precision: Precision = "fp32",
                    ) -> np.ndarray:
    """[examples, 2] summed log-probabilities of each example's two sequences under `model` as it is now,
    computed in the job's `precision`: at the first step the policy then matches its reference exactly."""
    path = folder / REFERENCE
    if path.exists():
        kept = np.load(path)
        if kept.shape == (data.n_examples, 2):
            return kept
    started = time.time()
    out = np.zeros((data.n_examples, 2), dtype=np.float32)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), autocast(next(model.parameters()).device, precision):
            for batch in data.reference_batches():
                sums, _ = sequence_logps(model, batch.policy)
                out[batch.examples, batch.slots] = sums.float().cpu().numpy()
    finally:
        model.train(was_training)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, out)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    log.info("reference log-probabilities of %d examples in %.1fs", data.n_examples, time.time() - started)
    return out

"""KTO: answers judged good or bad, one at a time, against a KL baseline of mismatched prompt/answer pairs.

    kl    = max(0, mean over the batch of [π(prompt_i, answer_j) - ref(prompt_i, answer_j)])   (no gradient)
    good: loss_i = w_good · (1 - σ(β · (π_i - ref_i - kl)))
    bad:  loss_i = w_bad  · (1 - σ(β · (kl - (π_i - ref_i))))
    loss  = the mean of loss_i over every answer of the batch

with π, ref summed log-probabilities of the answers. An answer's mismatched pair is its prompt with the
next example's answer in the file (data/examples.py), fixed before training, so the reference side of
the KL is computed once with the rest. Equal to TRL's `KTOTrainer` on the same batch.
"""

from __future__ import annotations

from typing import ClassVar

import torch

from finetuned.data import PreferenceBatch
from finetuned.worker.loss import sequence_logps
from finetuned.worker.objectives.base import Metrics
from finetuned.worker.objectives.preference import PairObjective


class KTO(PairObjective):
    name: ClassVar[str] = "kto"
    needs_reference: ClassVar[bool] = True

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> tuple[torch.Tensor, Metrics]:
        assert batch.kl is not None and batch.desirable is not None
        logps, _counts = sequence_logps(model, batch.policy)
        device = logps.device
        with torch.no_grad():
            kl_logps, _ = sequence_logps(model, batch.kl)
            kl = (kl_logps - self.ref(batch.examples, 1, device)).mean().clamp(min=0)
        logratio = logps - self.ref(batch.examples, 0, device)
        good = torch.from_numpy(batch.desirable).to(device)
        s = self.settings
        beta = s.beta
        losses = torch.where(good, s.kto_desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))),
                             s.kto_undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))))
        rewards = beta * logratio.detach()
        n_good, n_bad = float(good.sum()), float((~good).sum())
        metrics: Metrics = {"kl": (kl * len(logps), float(len(logps)))}
        if n_good:
            metrics["rewards/chosen"] = (rewards[good].sum(), n_good)
            metrics["logps/chosen"] = (logps.detach()[good].sum(), n_good)
        if n_bad:
            metrics["rewards/rejected"] = (rewards[~good].sum(), n_bad)
            metrics["logps/rejected"] = (logps.detach()[~good].sum(), n_bad)
        return losses.sum(), metrics

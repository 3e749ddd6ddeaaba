"""SimPO: no reference; the chosen answer's mean log-probability per token should beat the rejected one's by γ.

    loss_i = -log σ(β · [(c̄ - r̄) - γ/β])    (+ sft_weight · NLL of the chosen per token)

with c̄, r̄ the answers' log-probabilities averaged over their tokens. Equal to TRL's `CPOTrainer` with
`loss_type="simpo"` and `cpo_alpha=0` on the same batch (its order of operations kept: (c̄ - r̄) - γ/β).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from finetuned.data import PreferenceBatch
from finetuned.worker.loss import sequence_logps
from finetuned.worker.objectives.base import Metrics
from finetuned.worker.objectives.preference import PairObjective


class SimPO(PairObjective):
    name: ClassVar[str] = "simpo"
    needs_reference: ClassVar[bool] = False

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> tuple[torch.Tensor, Metrics]:
        sums, counts = sequence_logps(model, batch.policy)
        chosen, rejected, _examples = self.halves(batch)
        c, r = sums[chosen] / counts[chosen].clamp(min=1), sums[rejected] / counts[rejected].clamp(min=1)
        beta, gamma = self.settings.beta, self.settings.simpo_gamma
        losses = -F.logsigmoid(beta * ((c - r) - gamma / beta))
        if self.settings.sft_weight:
            losses = losses + self.settings.sft_weight * -c
        return losses.sum(), self.pair_metrics(beta * c.detach(), beta * r.detach(), c.detach(), r.detach())

"""DPO (sigmoid): the chosen answer's log-ratio to the reference should beat the rejected one's.

    loss_i = -log σ(β · [(π_c - ref_c) - (π_r - ref_r)])    (+ sft_weight · NLL of the chosen per token)

with π, ref the summed log-probabilities of each answer under the policy and the reference
(the weights the job started from, computed once before its first step: reference.py).
Equal to TRL's `DPOTrainer` with `loss_type="sigmoid"` on the same batch (tests/worker/test_objectives.py).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from finetuned.data import PreferenceBatch
from finetuned.worker.loss import sequence_logps
from finetuned.worker.objectives.base import Metrics
from finetuned.worker.objectives.preference import PairObjective


class DPO(PairObjective):
    name: ClassVar[str] = "dpo"
    needs_reference: ClassVar[bool] = True

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> tuple[torch.Tensor, Metrics]:
        sums, counts = sequence_logps(model, batch.policy)
        chosen, rejected, examples = self.halves(batch)
        c, r = sums[chosen], sums[rejected]
        beta = self.settings.beta
        chosen_reward = beta * (c - self.ref(examples, 0, c.device)).detach()
        rejected_reward = beta * (r - self.ref(examples, 1, c.device)).detach()
        delta = (c - self.ref(examples, 0, c.device)) - (r - self.ref(examples, 1, c.device))
        losses = -F.logsigmoid(beta * delta)
        if self.settings.sft_weight:
            losses = losses + self.sft_term(c, counts[chosen])
        return losses.sum(), self.pair_metrics(chosen_reward, rejected_reward, c.detach(), r.detach())

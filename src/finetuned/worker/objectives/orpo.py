"""ORPO: no reference; the odds of the chosen answer should beat the rejected one's, beside plain NLL.

    log_odds_i = (c̄ - r̄) - (log(1 - e^c̄) - log(1 - e^r̄))
    loss       = NLL(chosen) - mean_i λ · log σ(log_odds_i)

with c̄, r̄ the answers' mean log-probabilities per token, and the NLL a mean over every token of the
chosen sequences after their first, the prompt included, as TRL's `ORPOTrainer` computes it (LLaMA-Factory
takes the answer only). Equal to TRL's on the same batch. λ is `preference.orpo_lambda`.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from finetuned.data import PreferenceBatch
from finetuned.data.batches import IGNORE
from finetuned.worker.loss import all_tokens, token_logps
from finetuned.worker.objectives.base import Metrics
from finetuned.worker.objectives.preference import PairObjective


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, without losing precision near either end."""
    return torch.where(x < -0.6931471805599453, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


class ORPO(PairObjective):
    name: ClassVar[str] = "orpo"
    needs_reference: ClassVar[bool] = False

    def loss(self, model: torch.nn.Module, batch: PreferenceBatch) -> tuple[torch.Tensor, Metrics]:
        chosen, rejected, _examples = self.halves(batch)
        policy = batch.policy
        labels = all_tokens(policy, chosen)  # the chosen sequences whole, the rejected ones' answers
        logps, keep = token_logps(model, policy, labels)
        owner = policy.sequence_ids[:, 1:].to(keep.device)[keep]
        answer = (policy.labels[:, 1:].to(keep.device) != IGNORE)[keep]
        n = policy.n_sequences
        sums = logps.new_zeros(n).index_add(0, owner, torch.where(answer, logps, 0.0))
        counts = torch.bincount(owner[answer], minlength=n).to(logps.dtype).clamp(min=1)
        chosen_dev = chosen.to(logps.device)
        c, r = (sums / counts)[chosen_dev], (sums / counts)[rejected.to(logps.device)]
        in_chosen = torch.isin(owner, chosen_dev)
        nll = -logps[in_chosen].sum() / in_chosen.sum().clamp(min=1)
        log_odds = (c - r) - (log1mexp(c) - log1mexp(r))
        ratio = F.logsigmoid(log_odds)
        losses = nll - self.settings.orpo_lambda * ratio
        if self.settings.sft_weight:
            losses = losses + self.settings.sft_weight * -c
        beta = self.settings.orpo_lambda
        metrics = self.pair_metrics(beta * c.detach(), beta * r.detach(), c.detach(), r.detach())
        metrics["nll_loss"] = (nll.detach() * len(c), float(len(c)))
        metrics["log_odds_ratio"] = (ratio.detach().sum(), float(len(c)))
        return losses.sum(), metrics

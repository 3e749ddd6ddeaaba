"""What DPO, ORPO, SimPO and KTO share: the settings, the reference log-probabilities, the pair's halves.

Log-probabilities of a sequence are sums over its trained tokens (the answer and
the end-of-turn token that closes it, never the prompt), as TRL computes them;
`average` ones divide by their count (ORPO, SimPO).
"""

from __future__ import annotations

import numpy as np
import torch

from finetuned.config import PreferenceSettings
from finetuned.data import PreferenceBatch
from finetuned.worker.objectives.base import Metrics


class PairObjective:
    """Pairs of answers: the chosen one (slot 0) and the rejected one (slot 1) of each example."""

    def __init__(self, settings: PreferenceSettings, reference: np.ndarray | None = None) -> None:
        self.settings = settings
        self.reference = None if reference is None else torch.from_numpy(reference)

    def units(self, batch: PreferenceBatch) -> int:
        return batch.n_examples

    @staticmethod
    def halves(batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        """Indices of the chosen and the rejected sequences (pair by pair), and the pairs' example ids."""
        chosen, rejected = np.flatnonzero(batch.slots == 0), np.flatnonzero(batch.slots == 1)
        return torch.from_numpy(chosen), torch.from_numpy(rejected), batch.examples[chosen]

    def ref(self, examples: np.ndarray, slot: int, device: torch.device) -> torch.Tensor:
        assert self.reference is not None, "this objective needs reference log-probabilities"
        return self.reference[torch.from_numpy(examples), slot].to(device)

    def pair_metrics(self, chosen_reward: torch.Tensor, rejected_reward: torch.Tensor, chosen_logps: torch.Tensor,
                     rejected_logps: torch.Tensor) -> Metrics:
        n = float(chosen_reward.numel())
        return {
            "rewards/chosen": (chosen_reward.sum(), n),
            "rewards/rejected": (rejected_reward.sum(), n),
            "rewards/margins": ((chosen_reward - rejected_reward).sum(), n),
            "rewards/accuracies": ((chosen_reward > rejected_reward).float().sum(), n),
            "logps/chosen": (chosen_logps.sum(), n),
            "logps/rejected": (rejected_logps.sum(), n),
        }

    def sft_term(self, chosen_logps: torch.Tensor, chosen_counts: torch.Tensor) -> torch.Tensor:
        """LLaMA-Factory's pref_ftx: each chosen answer's mean negative log-likelihood per token, weighted."""
        return self.settings.sft_weight * (-chosen_logps / chosen_counts.clamp(min=1))

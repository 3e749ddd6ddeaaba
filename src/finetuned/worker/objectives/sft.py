"""Supervised fine-tuning: cross-entropy on the tokens the data marks as trained."""

from __future__ import annotations

from typing import ClassVar

import torch

from finetuned.data.batches import Batch
from finetuned.worker.loss import token_loss_sum
from finetuned.worker.objectives.base import Metrics


class SFT:
    name: ClassVar[str] = "sft"

    def units(self, batch: Batch) -> int:
        return batch.n_loss_tokens

    def loss(self, model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, Metrics]:
        return token_loss_sum(model, batch), {}

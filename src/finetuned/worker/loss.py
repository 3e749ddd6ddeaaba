"""The training loss without the full float32 logits.

A causal LM's output layer is most of the memory (and, for small models with a
large vocabulary, most of the time): [batch, seq, vocab] logits in float32.
Only positions whose next token carries loss need logits at all, so the
hidden states are gathered at those positions and the output layer runs on
them in chunks; past one chunk, each chunk's logits are recomputed in the
backward pass instead of kept. The result is the same sum of token losses as
`F.cross_entropy` over the full logits.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from finetuned.data.batches import IGNORE
from finetuned.models.attention import uses_packed_attention

CHUNK_TOKENS = 4096


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports_selective_logits(model: torch.nn.Module) -> bool:
    """Models whose logits are a plain linear map of the last hidden state (no softcapping or scaling)."""
    base = _unwrap(model)
    config = getattr(base, "config", None)
    odd = any(getattr(config, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return not odd and hasattr(base, "get_decoder") and base.get_output_embeddings() is not None


def _chunk_loss(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), labels, reduction="sum")


def token_loss_sum(model: torch.nn.Module, batch: Any, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's loss tokens (labels are unshifted, -100 = no loss)."""
    device = next(model.parameters()).device
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": None if batch.attention_mask is None else batch.attention_mask.to(device),
        "position_ids": None if batch.position_ids is None else batch.position_ids.to(device),
    }
    if getattr(batch, "segments", None) is not None and uses_packed_attention(model):
        inputs["packed_segments"] = batch.segments
    labels = batch.labels[:, 1:].to(device)
    if not supports_selective_logits(model):
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1),
                               ignore_index=IGNORE, reduction="sum")
    base = _unwrap(model)
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state
    keep = labels != IGNORE
    hidden, targets = hidden[:, :-1][keep], labels[keep]
    head = base.get_output_embeddings()
    if hidden.size(0) <= chunk_tokens:
        return _chunk_loss(head, hidden, targets)
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, hidden.size(0), chunk_tokens):
        end = start + chunk_tokens
        total = total + checkpoint(_chunk_loss, head, hidden[start:end], targets[start:end], use_reentrant=False)
    return total

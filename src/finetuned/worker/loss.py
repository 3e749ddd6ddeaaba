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


def _inputs(model: torch.nn.Module, batch: Any, device: torch.device) -> dict[str, Any]:
    inputs = {
        "input_ids": batch.input_ids.to(device),
        "attention_mask": None if batch.attention_mask is None else batch.attention_mask.to(device),
        "position_ids": None if batch.position_ids is None else batch.position_ids.to(device),
    }
    if getattr(batch, "segments", None) is not None and uses_packed_attention(model):
        inputs["packed_segments"] = batch.segments
    return inputs


def token_loss_sum(model: torch.nn.Module, batch: Any, chunk_tokens: int = CHUNK_TOKENS) -> torch.Tensor:
    """Sum of the cross-entropy over the batch's loss tokens (labels are unshifted, -100 = no loss)."""
    device = next(model.parameters()).device
    inputs = _inputs(model, batch, device)
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


def _chunk_logps(head: torch.nn.Module, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -F.cross_entropy(head(hidden).float(), labels, reduction="none")


def token_logps(model: torch.nn.Module, batch: Any, labels: torch.Tensor | None = None,
                chunk_tokens: int = CHUNK_TOKENS) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each labelled next token, in order, and where they are (a [B, L-1] mask).

    `labels` (unshifted, -100 = not scored) defaults to the batch's own: the trained tokens. As
    `token_loss_sum` does, only scored positions get logits, in checkpointed chunks.
    """
    device = next(model.parameters()).device
    inputs = _inputs(model, batch, device)
    targets = (batch.labels if labels is None else labels)[:, 1:].to(device)
    keep = targets != IGNORE
    if not supports_selective_logits(model):
        logits = model(**inputs, use_cache=False).logits[:, :-1].float()
        return -F.cross_entropy(logits[keep], targets[keep], reduction="none"), keep
    base = _unwrap(model)
    hidden = base.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1][keep]
    head, targets = base.get_output_embeddings(), targets[keep]
    if hidden.size(0) <= chunk_tokens:
        return _chunk_logps(head, hidden, targets), keep
    pieces = [checkpoint(_chunk_logps, head, hidden[a : a + chunk_tokens], targets[a : a + chunk_tokens],
                         use_reentrant=False) for a in range(0, hidden.size(0), chunk_tokens)]
    return torch.cat(pieces), keep


def sequence_logps(model: torch.nn.Module, batch: Any, labels: torch.Tensor | None = None,
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sequence of the batch (its `sequence_ids`): the sum of its scored tokens' log p, and how many there are."""
    logps, keep = token_logps(model, batch, labels)
    owner = batch.sequence_ids[:, 1:].to(keep.device)[keep]
    n = batch.n_sequences
    sums = logps.new_zeros(n).index_add(0, owner, logps)
    counts = torch.bincount(owner, minlength=n).to(logps.dtype)
    return sums, counts


def all_tokens(batch: Any, sequences: torch.Tensor) -> torch.Tensor:
    """Labels that score every token of the given sequences after their first (and the batch's own elsewhere)."""
    ids, owner = batch.input_ids, batch.sequence_ids
    chosen = torch.isin(owner, sequences)
    first = torch.ones_like(chosen)
    first[:, 1:] = owner[:, 1:] != owner[:, :-1]
    return torch.where(chosen & ~first, ids, batch.labels)

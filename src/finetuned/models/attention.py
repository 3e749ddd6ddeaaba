"""Attention for packed rows: causal SDPA per example instead of one SDPA over a block mask.

A packed row holds several examples that must not see each other. The block
mask (data/batches.py) says so, but any explicit mask keeps SDPA off its
flash kernels: every row pays for attention across all its examples and, on
a GPU, for the slower masked kernel. Given each row's example boundaries,
this runs causal SDPA on each example alone, which is what the mask means,
with the fast kernels. Same loss and gradients (tests/models/test_attention.py);
1.20x the tokens/s on two CPU cores at 4 x 1024 tokens, SmolLM2 shape
(`bench/train_cpu.py --levers no-per-example`).

Registered with transformers' attention registry under NAME; a model uses it
when `use_packed_attention` switched it from "sdpa". Calls without example
boundaries (generation, unpacked batches) take the plain sdpa path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

NAME = "finetuned_packed"
Segments = Sequence[Sequence[tuple[int, int]]]  # per row: (start, end) of each example, padding included


def packed_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    segments: Segments | None = kwargs.pop("packed_segments", None)
    if segments is None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    gqa = getattr(module, "num_key_value_groups", 1) > 1
    out = torch.empty_like(query)  # [batch, heads, seq, head_dim]
    for row, spans in enumerate(segments):
        for start, end in spans:
            part = slice(start, end)
            out[row : row + 1, :, part] = F.scaled_dot_product_attention(
                query[row : row + 1, :, part], key[row : row + 1, :, part], value[row : row + 1, :, part],
                dropout_p=dropout, is_causal=True, scale=scaling, enable_gqa=gqa)
    return out.transpose(1, 2).contiguous(), None


def use_packed_attention(model: torch.nn.Module) -> bool:
    """Switch a model on plain sdpa to per-example attention; False (unchanged) for any other kind."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa" or not hasattr(model, "set_attn_implementation"):
        return False
    AttentionInterface.register(NAME, packed_attention)
    # Without a mask builder transformers would pass no mask at all (padding in generation
    # would be attended): masks are built as for sdpa, which the fallback path is.
    AttentionMaskInterface.register(NAME, sdpa_mask)
    model.set_attn_implementation(NAME)
    return True


def uses_packed_attention(model: torch.nn.Module) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(getattr(base, "config", None), "_attn_implementation", None) == NAME

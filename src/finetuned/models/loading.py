"""Resolving `base_model` to a folder, loading it, and putting LoRA on it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from finetuned.config import LoraSettings
from finetuned.models import builtin

if TYPE_CHECKING:
    from torch import nn
    from transformers import PreTrainedTokenizerBase


class ModelError(Exception):
    pass


def resolve_base(name: str, base_models: Path) -> Path:
    """The local folder holding `base_model`: a built-in (written out once) or a path."""
    if builtin.is_builtin(name):
        try:
            return builtin.materialize(name, base_models)
        except builtin.BuiltinModelError as exc:
            raise ModelError(str(exc)) from None
    path = Path(name).expanduser()
    if not path.is_absolute():
        path = base_models / path if (base_models / path).exists() else path.resolve()
    if not (path / "config.json").exists():
        raise ModelError(f"base_model '{name}' is not a Hugging Face model folder (no config.json in {path})")
    return path


def weights_hash(folder: Path) -> str:
    """sha256 over the weight files, in name order: what a job was trained from."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for f in files:
        h.update(f.name.encode())
        with open(f, "rb") as stream:
            while block := stream.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def load_tokenizer(folder: Path) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def load_model(folder: Path) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    # float32 on CPU: bf16 matmuls are far slower there and exact resume is checked in fp32.
    dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    if torch.cuda.is_available():
        model = model.to("cuda")
    return model


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

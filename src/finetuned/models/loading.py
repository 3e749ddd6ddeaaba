"""Resolving `base_model` to a folder, loading it, and putting LoRA on it."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from finetuned.config import LoraSettings
from finetuned.models import builtin

if TYPE_CHECKING:
    import torch
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


def load_model(folder: Path, method: str = "lora", device: torch.device | str = "cpu",
               activation_checkpointing: bool = False, place: bool = True) -> nn.Module:
    """The base model on `device` (the caller's world chooses it): bf16 on a GPU, float32 on the CPU;
    4-bit NF4 for qlora. `place=False` leaves it on the CPU in `device`'s dtype: a sharded world moves
    each unit's part of it to the device as it shards it (worker/sharded.py), never the whole model."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetuned.models.attention import use_packed_attention

    device = torch.device(device)
    # float32 on CPU: bf16 matmuls are far slower there and exact resume is checked in fp32.
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=dtype)
        model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, quantization_config=quantization,
                                                     device_map={"": str(device)})
        use_packed_attention(model)
        return prepare_model_for_kbit_training(model, use_gradient_checkpointing=activation_checkpointing,
                                               gradient_checkpointing_kwargs={"use_reentrant": False})
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    if place:
        model = model.to(device)
    use_packed_attention(model)  # packed rows attend per example, with SDPA's fast kernels
    if activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5 renamed it
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

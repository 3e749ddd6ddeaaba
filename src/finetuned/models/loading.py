"""Resolving `base_model` to a folder, loading it, and putting LoRA on it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import TYPE_CHECKING

from finetuned.config import LoraSettings
from finetuned.errors import FinetunedError
from finetuned.models import builtin
from finetuned.workspace import Workspace

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import PreTrainedTokenizerBase


class ModelError(FinetunedError):
    pass


# `org/name` as the hub spells it: a user who pasted one from a model page gets told what to do instead.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def base_path(name: str, ws: Workspace) -> Path:
    """Where `base_model` lives, writing nothing: a built-in's folder, an absolute path, or a relative one read
    from the workspace (never from the current folder, which differs under systemd): a name under
    `models/base/` (where consolidated versions live) if there is one, else a path from the workspace root."""
    if builtin.is_builtin(name):
        return ws.base_models / name.removeprefix(builtin.PREFIX)
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    under_base = ws.base_models / path
    return under_base if under_base.exists() else ws.root / path


def adapter_path(name: str, ws: Workspace) -> Path:
    """Where `training.init_adapter` lives: a path (relative ones from the workspace) or a job id's adapter."""
    path = Path(name).expanduser()
    if path.is_absolute():
        return path
    return ws.adapters / path if (ws.adapters / path).is_dir() else ws.root / path


def resolve_base(name: str, ws: Workspace) -> Path:
    """The local folder holding `base_model`: a built-in (written out once) or a Hugging Face model folder."""
    if builtin.is_builtin(name):
        try:
            return builtin.materialize(name, ws.base_models)
        except builtin.BuiltinModelError as exc:
            raise ModelError(str(exc)) from None
    path = base_path(name, ws)
    if (path / "config.json").exists():
        return path
    if not path.exists():
        where = "" if Path(name).expanduser().is_absolute() else " (relative paths are read from the workspace)"
        hub = "" if not _HUB_ID.match(name) else (
            f"; a hub id is never downloaded: fetch it once (huggingface-cli download {name} --local-dir "
            f"models/base/{name.split('/')[-1]}) and set base_model to that folder")
        raise ModelError(f"base_model '{name}': no such folder {path}{where}{hub}")
    raise ModelError(f"base_model '{name}' is not a Hugging Face model folder (no config.json in {path})")


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


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: Path) -> None:
    """The tokenizer's files in `folder`, with the chat template training used (`chat_template.jinja`)."""
    from finetuned.data.masking import training_template

    own = tokenizer.chat_template
    # The worker's tokenizer is cached across jobs: set the template for the save, then put it back.
    tokenizer.chat_template = training_template(tokenizer)
    try:
        tokenizer.save_pretrained(str(folder))
    finally:
        tokenizer.chat_template = own


def load_model(folder: Path, method: str = "lora", device: torch.device | str = "cpu",
               activation_checkpointing: bool = False, place: bool = True, precision: str = "fp32") -> nn.Module:
    """The base model on `device` (the caller's world chooses it), in float32 but for a frozen LoRA base on
    a GPU training in bf16 (`precision`, models/precision.py); 4-bit NF4 for qlora. `place=False` leaves it
    on the CPU in that dtype: a sharded world moves each unit's part of it to the device as it shards it
    (worker/sharded.py), never the whole model."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetuned.models.attention import use_packed_attention

    device = torch.device(device)
    # Trained weights stay float32 (bf16 runs under autocast): a bf16 copy of a frozen base halves a GPU's
    # memory for it, while on a CPU autocast would cast it back to bf16 per op anyway, costing little.
    frozen_bf16 = precision == "bf16" and device.type == "cuda" and method != "full"
    dtype = torch.bfloat16 if frozen_bf16 else torch.float32
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


def add_lora(model: nn.Module, settings: LoraSettings, init_adapter: Path | None = None) -> nn.Module:
    """Fresh LoRA weights as `settings` say, or a user's adapter to continue (its own shape and targets)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if init_adapter is not None:
        return PeftModel.from_pretrained(model, str(init_adapter), is_trainable=True)
    config = LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=settings.target_modules, task_type="CAUSAL_LM",
    )
    return get_peft_model(model, config)

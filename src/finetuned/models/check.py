"""Can this config train? The base model, its tokenizer, the LoRA targets and a starting adapter, checked
before any file is accepted.

Nothing heavy is loaded: the model's config and tokenizer, and the model built on the
meta device (no memory, no weights), which is enough to know its class and every module
name. Each failure is one line naming the setting to change. The daemon runs this in a
child process at start-up and whenever the settings change (`worker/checker.py`); the
worker runs it again before it loads a model.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from finetuned.config import Config
from finetuned.models.loading import ModelError, adapter_path, resolve_base
from finetuned.workspace import Workspace

if TYPE_CHECKING:
    from torch import nn

# What LoRA can wrap (peft's LoRA layers); a target that names only other modules trains nothing.
_LORA_LAYERS = ("Linear", "Embedding", "Conv1d", "Conv2d", "Conv3d", "Conv1D")
_ADAPTER_WEIGHTS = ("adapter_model.safetensors", "adapter_model.bin")


@dataclass
class BaseCheck:
    path: Path
    tokenizer: Any
    adapter: Path | None
    summary: str  # "llama, 2 layers, vocabulary 49152, chat template"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


def check_base_model(config: Config, ws: Workspace) -> BaseCheck:
    """The checks in order of what a user fixes first; ModelError with one line on the first that fails."""
    from transformers import AutoConfig, AutoTokenizer

    name = config.base_model
    path = resolve_base(name, ws)
    try:
        model_config = AutoConfig.from_pretrained(str(path))
    except Exception as exc:  # whatever transformers raises, the answer is the same: it does not load
        raise ModelError(f"base_model '{name}': its config.json does not load: {_first_line(exc)}") from None
    _causal_lm(name, model_config)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except Exception as exc:
        raise ModelError(f"base_model '{name}': its tokenizer does not load: {_first_line(exc)}") from None
    model = _meta_model(name, model_config)
    adapter = None
    if config.training.init_adapter:
        adapter = _check_adapter(config.training.init_adapter, ws, model)
    elif config.method in ("lora", "qlora"):
        _check_targets(config.lora.target_modules, model, "lora.target_modules")
    template = "chat template" if getattr(tokenizer, "chat_template", None) else \
        "no chat template (the plain '### Role:' fallback renders chats)"
    summary = (f"{model_config.model_type}, {getattr(model_config, 'num_hidden_layers', '?')} layers, "
               f"vocabulary {len(tokenizer)}, {template}")
    return BaseCheck(path, tokenizer, adapter, summary)


def _causal_lm(name: str, model_config: Any) -> None:
    """A decoder that AutoModelForCausalLM builds and that predicts the next token from the left only."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = model_config.model_type
    architectures = ", ".join(getattr(model_config, "architectures", None) or []) or kind
    if kind not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or getattr(model_config, "is_encoder_decoder", False):
        raise ModelError(f"base_model '{name}': a {kind} model ({architectures}) is not a causal language model; "
                         "finetuned trains decoder models (Llama, Qwen, Mistral, SmolLM...)")
    # Encoders such as BERT have a causal-LM class too, but without `is_decoder` it attends both ways:
    # the next-token objective would be meaningless (it sees the answer).
    if kind in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(model_config, "is_decoder", False):
        raise ModelError(f"base_model '{name}': a {kind} model ({architectures}) is an encoder, not a causal "
                         "language model (no is_decoder in its config); finetuned trains decoder models "
                         "(Llama, Qwen, Mistral, SmolLM...)")


def _meta_model(name: str, model_config: Any) -> nn.Module:
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):  # module names and shapes without memory or weights
            return AutoModelForCausalLM.from_config(model_config)
    except Exception as exc:
        raise ModelError(f"base_model '{name}': the model cannot be built: {_first_line(exc)}") from None


def _lora_modules(model: nn.Module) -> dict[str, str]:
    """Module name -> class name, for the modules LoRA can wrap (the output layer left out, as peft does)."""
    output = model.get_output_embeddings()
    return {n: type(m).__name__ for n, m in model.named_modules()
            if type(m).__name__ in _LORA_LAYERS and m is not output and n}


def _layer_names(modules: dict[str, str]) -> str:
    names = sorted({n.rsplit(".", 1)[-1] for n, kind in modules.items() if kind in ("Linear", "Conv1D")})
    return ", ".join(names) or "none"


def _check_targets(targets: Any, model: nn.Module, key: str) -> None:
    """peft's matching: a string is a regular expression over full module names, a list matches name suffixes."""
    wrappable = _lora_modules(model)
    names = [n for n, _ in model.named_modules() if n]
    if targets == "all-linear":
        if not any(kind in ("Linear", "Conv1D") for kind in wrappable.values()):
            raise ModelError(f"{key} 'all-linear': the model has no linear layer for LoRA")
        return
    if isinstance(targets, str):
        matched = [n for n in names if re.fullmatch(targets, n)]
        if not matched:
            raise ModelError(f"{key} '{targets}' matches no module of the model (its linear layers: "
                             f"{_layer_names(wrappable)}; or use \"all-linear\")")
    else:
        targets = list(targets or [])
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
        if missing or not targets:
            raise ModelError(f"{key}: {', '.join(map(repr, missing)) or 'an empty list'} "
                             f"{'matches' if len(missing) == 1 else 'match'} no module of the model (its linear "
                             f"layers: {_layer_names(wrappable)}; or use \"all-linear\")")
        matched = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
    if not any(n in wrappable for n in matched):
        kinds = sorted({type(model.get_submodule(n)).__name__ for n in matched})
        raise ModelError(f"{key} names {', '.join(kinds)} modules, which LoRA cannot wrap; name linear layers "
                         f"({_layer_names(wrappable)}) or use \"all-linear\"")


def _check_adapter(value: str, ws: Workspace, model: nn.Module) -> Path:
    """A LoRA adapter made for this model: its targets exist and every weight has the shape of its layer."""
    path = adapter_path(value, ws)
    key = f"training.init_adapter '{value}'"
    config_file = path / "adapter_config.json"
    if not config_file.exists():
        raise ModelError(f"{key}: no PEFT adapter at {path} (no adapter_config.json)")
    try:
        adapter = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{key}: {config_file} does not load: {_first_line(exc)}") from None
    if adapter.get("peft_type") != "LORA":
        raise ModelError(f"{key}: a {adapter.get('peft_type')} adapter; finetuned continues LoRA adapters")
    weights = next((path / f for f in _ADAPTER_WEIGHTS if (path / f).exists()), None)
    if weights is None:
        raise ModelError(f"{key}: no adapter weights in {path} ({' or '.join(_ADAPTER_WEIGHTS)})")
    _check_targets(adapter.get("target_modules"), model, f"{key}: its target_modules")
    if weights.suffix == ".safetensors":
        _check_shapes(key, weights, model)
    return path


def _check_shapes(key: str, weights: Path, model: nn.Module) -> None:
    from safetensors import safe_open

    with safe_open(str(weights), framework="pt") as f:
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            module_name, _, part = name.removeprefix("base_model.model.").rpartition(".lora_")
            if not part.startswith(("A.", "B.")):
                continue  # embeddings' lora_embedding_A/B, magnitudes: their layer's check is peft's
            try:
                layer = model.get_submodule(module_name)
            except AttributeError:
                raise ModelError(f"{key}: made for another model (it has {module_name}, this model has not)") \
                    from None
            shape = f.get_slice(name).get_shape()
            want = getattr(layer, "in_features", None) if part.startswith("A") else getattr(layer, "out_features",
                                                                                              None)
            got = shape[1] if part.startswith("A") else shape[0]
            if want is not None and got != want:
                raise ModelError(f"{key}: made for another model ({name} has {got} features where this "
                                 f"model's {module_name} has {want})")

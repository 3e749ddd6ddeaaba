"""The README.md of an export: a Hugging Face model card saying what the model is, from what data, how
many steps, and how to load it.

The front matter (`base_model`, `library_name`, `tags`) is what the hub and other tools
read; the rest is for the person who finds the folder on a NAS a year later.
"""

from __future__ import annotations

import json
from typing import Any

from finetuned.lifecycle.records import Adapter
from finetuned.lifecycle.versions import Version
from finetuned.models import builtin
from finetuned.timestamps import now_text

README = "README.md"
METADATA = "finetuned.json"

LOAD_MODEL = """```python
from transformers import AutoModelForCausalLM, AutoTokenizer

model = AutoModelForCausalLM.from_pretrained("{path}")
tokenizer = AutoTokenizer.from_pretrained("{path}")
```"""
LOAD_ADAPTER = """```python
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

base = AutoModelForCausalLM.from_pretrained("{path}/base")
model = PeftModel.from_pretrained(base, "{path}/adapter")
tokenizer = AutoTokenizer.from_pretrained("{path}/{tokenizer}")
```

`adapter/adapter_config.json` names its base as `../base` (relative to `adapter/`), so the
folder can be moved or copied as a whole."""
LOAD_GGUF = """- llama.cpp: `llama-cli -m {path}/model.gguf`
- transformers: `AutoModelForCausalLM.from_pretrained("{path}", gguf_file="model.gguf")`"""
LOAD_OLLAMA = LOAD_GGUF + """
- Ollama: `ollama create NAME -f {path}/Modelfile && ollama run NAME`"""


def hub_id(base_model: str) -> str:
    """What the hub and other tools know the base as: a built-in's own Hub id (`builtin:` means nothing there)."""
    return builtin.HUB_IDS.get(base_model, base_model)


def _front_matter(base_model: str, library: str, tags: list[str]) -> str:
    # JSON strings are valid YAML scalars: no quoting rules to get wrong.
    return "\n".join(["---", f"base_model: {json.dumps(base_model)}", f"library_name: {library}",
                      "tags:", *[f"- {tag}" for tag in tags], "---", ""])


def _loss(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, int | float) else "?"


def job_card(adapter: Adapter, kind: str, base: Version, how: str, title: str | None = None,
             library: str | None = None) -> str:
    """A job's export: `adapter` (adapter/ + base/), `merged` (one model) or `model` (a full fine-tune);
    `how` is the "How to load" section (one of the LOAD_ texts, formatted)."""
    info = adapter.info
    training = (info.get("config") or {}).get("training") or {}
    data = info.get("data") or {}
    title = title or {"adapter": f"LoRA adapter of job {adapter.job_id}",
                      "merged": f"{base.id} with the adapter of job {adapter.job_id} merged in",
                      "model": f"the model fully fine-tuned by job {adapter.job_id}"}[kind]
    library = library or ("peft" if kind == "adapter" else "transformers")
    lora = ["lora"] if adapter.method in ("lora", "qlora") else []
    tags = list(dict.fromkeys(["finetuned", adapter.method, *lora]))  # method lora is tagged once
    schedule = training.get("lr_scheduler", "constant")
    lines = [
        _front_matter(hub_id(adapter.base_model), library, tags),
        f"# {title}",
        "",
        f"Trained by finetuned on `{info.get('file')}`, {adapter.steps} optimizer steps "
        f"({adapter.method}, {adapter.mode} mode), on top of `{adapter.base_model}` ({base.id}).",
        "",
        "## Data",
        "",
        f"- file: `{info.get('file')}` (sha256 `{info.get('sha256')}`)",
        f"- format: {info.get('format') or data.get('format') or '?'}; {info.get('train_examples', '?')} examples "
        f"trained, {info.get('holdout_examples', 0)} held out for validation",
        f"- tokens: {adapter.tokens} trained, {info.get('loss_tokens', '?')} of them carrying loss",
    ]
    if info.get("overrides"):
        lines.append(f"- the file's own settings: `{json.dumps(info['overrides'])}`")
    lines += [
        "",
        "## Training",
        "",
        f"- steps: {adapter.steps} of {info.get('total_steps', adapter.steps)}; the model line's step "
        f"{adapter.line_step}",
        f"- examples: {info.get('examples_trained', '?')} over {training.get('epochs', '?')} epoch(s), batch "
        f"{training.get('batch_size', '?')} x {training.get('grad_accum', 1)}, up to "
        f"{training.get('max_seq_len', '?')} tokens each",
        f"- learning rate: {training.get('learning_rate', '?')}, {schedule}"
        + (f" down to {training.get('min_lr_ratio', 0)} x" if schedule != "constant" else "")
        + f", warmup {training.get('warmup_steps', 0)} steps",
        f"- loss: {_loss(info.get('first_loss'))} at the first step, {_loss(info.get('final_loss'))} at the last"
        + (f"; validation loss {_loss(info.get('val_loss'))}" if info.get("val_loss") is not None else ""),
        f"- base weights sha256: `{adapter.base_hash}`",
        "",
        "## How to load",
        "",
        how,
        "",
        f"The full record is `{METADATA}`. Exported by finetuned on {now_text()}.",
        "",
    ]
    return "\n".join(lines)


def version_card(version: Version, how: str, title: str | None = None, library: str = "transformers") -> str:
    data = version.data or []
    lines = [
        _front_matter(version.parent or version.origin or version.id, library, ["finetuned", "merged"]),
        f"# {title or version.id}",
        "",
        f"Version {version.version} of the model line {version.name}, written by finetuned: "
        + (f"LoRA training merged onto `{version.parent}`." if version.parent else "an original base model."),
        "",
        "## Data",
        "",
        *([f"- `{d.get('file')}` (sha256 `{str(d.get('sha256'))[:12]}...`), job {d.get('job_id')}" for d in data]
          or ["- none: nothing has been trained into this version"]),
        "",
        "## Training",
        "",
        f"- {version.steps} steps and {version.tokens} tokens on top of its parent; {version.total_steps} steps "
        "since version 0",
        f"- created {version.created}; weights sha256 `{version.weights_hash}`",
        f"- note: {version.note or '-'}",
        "",
        "## How to load",
        "",
        how,
        "",
        f"The full record is `{METADATA}` and `version.json`. Exported by finetuned on {now_text()}.",
        "",
    ]
    return "\n".join(lines)


def checkpoint_card(label: str, line_step: int | None, method: str, base: Version, how: str,
                    title: str | None = None, library: str = "transformers") -> str:
    """A checkpoint's export (a job still training, or the line's newest state): what it is and how to load it."""
    lines = [
        _front_matter(hub_id(base.base_model), library, list(dict.fromkeys(["finetuned", method]))),
        f"# {title or label}",
        "",
        f"The weights of {label} (the model line's step {line_step}, {method}), trained by finetuned on top of "
        f"`{base.base_model}` ({base.id}); not yet a published adapter.",
        "",
        "## How to load",
        "",
        how,
        "",
        f"The full record is `{METADATA}`. Exported by finetuned on {now_text()}.",
        "",
    ]
    return "\n".join(lines)

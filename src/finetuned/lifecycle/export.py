"""Export: a self-contained model folder to load elsewhere, with a README.txt saying what it is.

A target (`lifecycle.targets.resolve`: a version, a job's adapter, a checkpoint) is
written in one of three formats:
- `hf`: a version is copied as it is; an adapter with a copy of its base beside it
  (`adapter/` + `base/`), or merged into one model (`--merged`);
- `gguf`: one model (an adapter merged into its base) converted by llama.cpp's own
  converter (`lifecycle.converter`) to `model.gguf`, f16 or q8_0;
- `ollama`: the GGUF and a Modelfile whose template is the one training used
  (`lifecycle.ollama`).
Each carries the chat template the model was trained with. The folder is written
under a temporary name and renamed when whole; an existing non-empty folder is never
written into.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from finetuned import disk
from finetuned.config import Config
from finetuned.fsio import atomic_write_json, publish_dir, remove_tree, sha256_file
from finetuned.lifecycle import converter, ollama
from finetuned.lifecycle.consolidate import ProgressFn, merge_into, no_progress
from finetuned.lifecycle.errors import LifecycleError, require_space
from finetuned.lifecycle.records import Adapter, read_adapter
from finetuned.lifecycle.targets import Target, resolve
from finetuned.lifecycle.versions import Version, model_dtype, read_version
from finetuned.queue.job import now_text
from finetuned.workspace import Workspace

METADATA = "finetuned.json"
README = "README.txt"
MODELFILE = "Modelfile"
FORMATS = ("hf", "gguf", "ollama")
STAGES = 4  # prepare, convert, describe, publish
SPACE_MARGIN = 64 << 20  # tokenizer and config files beside the weights

_LOAD_MODEL = """    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("{path}")
    tokenizer = AutoTokenizer.from_pretrained("{path}")
"""
_LOAD_ADAPTER = """    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained("{path}/base")
    model = PeftModel.from_pretrained(base, "{path}/adapter")
    tokenizer = AutoTokenizer.from_pretrained("{path}/{tokenizer}")
"""
_LOAD_GGUF = f"""    llama.cpp:     llama-cli -m {{path}}/{ollama.GGUF_FILE}
    transformers:  AutoModelForCausalLM.from_pretrained("{{path}}", gguf_file="{ollama.GGUF_FILE}")
"""
_LOAD_OLLAMA = _LOAD_GGUF + f"""    Ollama:        ollama create NAME -f {{path}}/{MODELFILE} && ollama run NAME
"""


def _copy_tree(src: Path, dst: Path) -> None:
    # Real copies, never hard links: the export must survive whatever happens to the workspace.
    shutil.copytree(src, dst, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns(".*.tmp", ".*.tmp-*", ".*.old-*"))


def _readme(what: str, details: list[str], load: str, path: Path) -> str:
    lines = [f"finetuned export: {what}", "", *details, "",
             "Load it with:", "", load.format(path=path), f"The full record is {METADATA} (and version.json or "
             "job.json where present). Written by finetuned on " + now_text() + ".", ""]
    return "\n".join(lines)


def _version_details(version: Version) -> list[str]:
    data = ", ".join(f"{d.get('file')} (sha256 {str(d.get('sha256'))[:12]}...)" for d in version.data) or "none"
    return [f"version: {version.id} (version {version.version} of the line {version.name})",
            f"merged onto: {version.parent or version.origin or 'nothing (an original base model)'}",
            f"trained: {version.steps} steps, {version.tokens} tokens on top of it "
            f"({version.total_steps} steps since version 0)",
            f"data: {data}", f"created: {version.created}", f"weights sha256: {version.weights_hash}",
            f"note: {version.note or '-'}"]


def _job_details(adapter: Adapter) -> list[str]:
    info = adapter.info
    return [f"job: {adapter.job_id}, file {info.get('file')} (sha256 {info.get('sha256')})",
            f"trained: {adapter.steps} steps, {info.get('examples_trained')} examples, {adapter.tokens} tokens "
            f"({adapter.method}, {adapter.mode} mode)",
            f"base model: {adapter.base_model} (weights sha256 {adapter.base_hash})",
            f"loss: {info.get('first_loss')} -> {info.get('final_loss')}"]


def _out(to: Path) -> tuple[Path, Path]:
    to = to.expanduser().absolute()
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise LifecycleError(f"{to} exists and is not empty; export into a new folder")
    to.parent.mkdir(parents=True, exist_ok=True)
    return to, to.parent / f".{to.name}.tmp"


def _publish(tmp: Path, to: Path) -> None:
    if to.exists():
        to.rmdir()  # empty, checked above: the rename needs the name free
    publish_dir(tmp, to)


class _Export:
    """One export: the target, what it is, and the temporary folder it is written into."""

    def __init__(self, target: Target, config: Config, tmp: Path, to: Path, report: ProgressFn) -> None:
        self.target, self.config, self.tmp, self.to, self.report = target, config, tmp, to, report
        self.adapter = read_adapter(target.adapter or target.model) if target.kind == "adapter" else None
        self.what, self.details, self.meta = self._describe()

    def _describe(self) -> tuple[str, list[str], dict[str, Any]]:
        target, adapter = self.target, self.adapter
        if target.version is not None:
            return (f"model version {target.version.id}", _version_details(target.version),
                    {"kind": "version", "version": target.version.model_dump(mode="json")})
        base_version = read_version(target.model)
        base = {"base": base_version.model_dump(mode="json") if base_version else str(target.model)}
        if adapter is not None:
            if not adapter.is_peft:  # a full fine-tune published a whole model
                return (f"the model fine-tuned by job {adapter.job_id}", _job_details(adapter),
                        {"kind": "model", "job": adapter.info, **base})
            return (f"the LoRA adapter of job {adapter.job_id}", _job_details(adapter),
                    {"kind": "adapter", "job": adapter.info, **base})
        checkpoint = {"label": target.label, "path": str(target.checkpoint), "line_step": target.step,
                      "method": target.method}
        return (target.label, [f"{target.label} (line step {target.step}, {target.method})",
                               f"base model: {target.model}"], {"kind": "checkpoint", "checkpoint": checkpoint, **base})

    @property
    def whole(self) -> bool:
        """The target is one model folder as it stands: a version, or a full fine-tune's model."""
        return self.target.adapter is None and self.target.checkpoint is None

    def need_space(self, factor: int) -> None:
        need = disk.model_bytes(self.target.model) * factor + SPACE_MARGIN
        require_space(self.to.parent, need, self.config.lifecycle.min_free_gb, f"export {self.target.label}")

    def merged_into(self, out: Path) -> None:
        """The target as one plain model folder at `out` (base and adapter merged), with the training template."""
        out.mkdir(parents=True)
        dtype = model_dtype(self.target.model)
        if self.adapter is not None:
            merge_into(self.target.model, self.adapter, out, dtype, self.report)
            return
        self.report(f"loading {self.target.label}", 1, STAGES)
        model, tokenizer = _load_checkpoint(self.target, self.config)
        _save_model(model.merge_and_unload() if hasattr(model, "merge_and_unload") else model, out, dtype)
        _save_tokenizer(tokenizer, out)

    def write_meta(self, load: str, extra: dict[str, Any], what: str | None = None) -> None:
        meta = {**self.meta, **extra, "exported": now_text(), "folder": str(self.to)}
        atomic_write_json(self.tmp / METADATA, json.loads(json.dumps(meta, default=str)))
        (self.tmp / README).write_text(_readme(what or self.what, self.details, load, self.to), encoding="utf-8")


def _load_checkpoint(target: Target, config: Config) -> tuple[Any, Any]:
    from finetuned.lifecycle.targets import load

    return load(target, config)


def _save_model(model: Any, out: Path, dtype: str | None) -> None:
    import torch

    model.to(getattr(torch, dtype) if dtype in ("float32", "float16", "bfloat16") else torch.float32)
    model.save_pretrained(str(out))


def _save_tokenizer(tokenizer: Any, out: Path) -> None:
    from finetuned.models.loading import save_tokenizer

    save_tokenizer(tokenizer, out)


def _export_hf(job: _Export, merged: bool) -> None:
    target, tmp = job.target, job.tmp
    if job.whole:
        job.need_space(1)
        job.report(f"copying {target.label}", 1, STAGES)
        _copy_tree(target.model, tmp)
        job.write_meta(_LOAD_MODEL, {"format": "hf"})
        return
    if merged:
        job.need_space(1)
        job.merged_into(tmp)
        job.write_meta(_LOAD_MODEL, {"format": "hf", "kind": "merged", "from": job.meta["kind"]},
                       f"{target.model.name} with {job.what} merged in")
        return
    job.need_space(1)
    tmp.mkdir(parents=True)
    job.report("copying the adapter", 1, STAGES)
    if target.adapter is not None:
        _copy_tree(target.adapter, tmp / "adapter")
    else:  # a checkpoint's trainable weights, written as a PEFT adapter
        model, tokenizer = _load_checkpoint(target, job.config)
        if not hasattr(model, "peft_config"):
            raise LifecycleError(f"{target.label} is a whole model ({target.method}): export it with --merged")
        model.save_pretrained(str(tmp / "adapter"))
        _save_tokenizer(tokenizer, tmp / "adapter")
    job.report("copying the base model", 2, STAGES)
    _copy_tree(target.model, tmp / "base")
    # The adapter's tokenizer has the template training used; an adapter from before it carried one has none.
    tokenizer = "adapter" if (tmp / "adapter" / "tokenizer_config.json").exists() else "base"
    job.write_meta(_LOAD_ADAPTER.replace("{tokenizer}", tokenizer), {"format": "hf"},
                   f"{job.what} (adapter/) and its base {target.model.name} (base/)")


def _with_template(source: Path, staging: Path, template: str) -> Path:
    """`source` as the converter should see it: with a chat template. A folder without one gets, in a staging
    folder of links, the template training used (FALLBACK_TEMPLATE), so the GGUF carries it too."""
    staging.mkdir(parents=True)
    for item in source.iterdir():
        if item.is_file():
            (staging / item.name).symlink_to(item.resolve())
    (staging / "chat_template.jinja").write_text(template, encoding="utf-8")
    return staging


def _tokenizer_folder(target: Target) -> Path:
    if target.adapter is not None and (target.adapter / "tokenizer_config.json").exists():
        return target.adapter
    return target.model


def _export_gguf(job: _Export, fmt: str, gguf_type: str) -> None:
    from finetuned.data.masking import training_template
    from finetuned.models.loading import load_tokenizer

    target, tmp = job.target, job.tmp
    tokenizer = load_tokenizer(_tokenizer_folder(target))
    template = training_template(tokenizer)
    match = None
    if fmt == "ollama":  # refused before minutes of merging and converting, not after
        match = ollama.recognise(
            lambda messages: tokenizer.apply_chat_template(list(messages), chat_template=template, tokenize=False,
                                                           add_generation_prompt=True),
            tokenizer.bos_token or "", tokenizer.eos_token or "")
    job.need_space(1 if job.whole else 2)
    tmp.mkdir(parents=True)
    work = tmp / ".source"
    source = target.model if job.whole else work
    if not job.whole:
        job.merged_into(work)
    if not load_tokenizer(source).chat_template:
        source = _with_template(source, tmp / ".staging", template)
    gguf = tmp / ollama.GGUF_FILE
    job.report("fetching llama.cpp's converter" if converter.ready() is None else "converting", 2, STAGES)
    converter.convert(source, gguf, gguf_type, lambda tensor: job.report(f"converting {tensor}", 2, STAGES))
    remove_tree(work)
    remove_tree(tmp / ".staging")
    job.report("hashing", 3, STAGES)
    extra: dict[str, Any] = {
        "format": fmt, "kind": "gguf", "from": job.meta["kind"], "type": gguf_type, "chat_template": template,
        "gguf": {"file": ollama.GGUF_FILE, "bytes": gguf.stat().st_size, "sha256": sha256_file(gguf)},
        "converter": {"package": converter.PACKAGE, "version": converter.VERSION, "sha256": converter.SHA256,
                      "script": converter.SCRIPT},
    }
    load = _LOAD_GGUF
    if match is not None:
        note = f"finetuned export of {target.label} ({gguf_type}), {now_text()}"
        (tmp / MODELFILE).write_text(ollama.modelfile(match, tokenizer.eos_token or "", note), encoding="utf-8")
        extra["ollama"] = {"template_family": match.family.name, "system": match.system}
        load = _LOAD_OLLAMA
    job.write_meta(load, extra, f"{job.what} as GGUF ({gguf_type})" if job.whole or job.adapter is None else
                   f"{job.what}, merged into its base, as GGUF ({gguf_type})")


def export(ws: Workspace, ref: str, to: Path, merged: bool = False, progress: ProgressFn | None = None,
           fmt: str = "hf", gguf_type: str = "f16") -> Path:
    """Export `ref` (a version, a job's adapter, a checkpoint: see `targets.resolve`) to `to` in format `fmt`
    (`hf`, `gguf`, `ollama`; `gguf_type` f16 or q8_0 for the last two); returns the folder."""
    if fmt not in FORMATS:
        raise LifecycleError(f"unknown export format '{fmt}' (known: {', '.join(FORMATS)})")
    if gguf_type not in converter.OUT_TYPES:
        raise LifecycleError(f"unknown GGUF type '{gguf_type}' (known: {', '.join(converter.OUT_TYPES)})")
    report = progress or no_progress
    config = ws.load_config()
    target = resolve(ws, ref)
    to, tmp = _out(to)
    remove_tree(tmp)
    try:
        job = _Export(target, config, tmp, to, report)
        if fmt == "hf":
            _export_hf(job, merged)
        else:
            _export_gguf(job, fmt, gguf_type)
        report("publishing", STAGES, STAGES)
        _publish(tmp, to)
    finally:
        remove_tree(tmp)
    return to

"""Export: a self-contained model folder to load elsewhere, with a model card (README.md) saying what it is.

A target (`lifecycle.targets.resolve`: a version, a job's adapter, a checkpoint) is
written in one of three formats:
- `hf`: a version is copied as it is; an adapter with a copy of its base beside it
  (`adapter/` + `base/`), or merged into one model (`--merged`);
- `gguf`: one model (an adapter merged into its base) converted by llama.cpp's own
  converter (`lifecycle.converter`) to `model.gguf`, f16 or q8_0;
- `ollama`: the GGUF and a Modelfile whose template is the one training used
  (`lifecycle.ollama`).
Each carries the chat template the model was trained with, and every file is readable by all
(0644); an exported adapter names its base as `../base`, the copy beside it. The folder is
written under a temporary name and renamed when whole; an existing non-empty folder is never
written into.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from finetuned import disk
from finetuned.config import Config, redacted
from finetuned.fsio import atomic_write_json, publish_dir, remove_tree, sha256_file
from finetuned.lifecycle import converter, ollama
from finetuned.lifecycle.consolidate import ProgressFn, merge_into, no_progress
from finetuned.lifecycle.errors import LifecycleError, require_space
from finetuned.lifecycle.modelcard import (
    LOAD_ADAPTER,
    LOAD_GGUF,
    LOAD_MODEL,
    LOAD_OLLAMA,
    METADATA,
    README,
    checkpoint_card,
    job_card,
    version_card,
)
from finetuned.lifecycle.records import read_adapter
from finetuned.lifecycle.targets import Target, resolve
from finetuned.lifecycle.versions import model_dtype, read_version, root_record
from finetuned.timestamps import now_text
from finetuned.workspace import ADAPTER_RECORD, Workspace

MODELFILE = "Modelfile"
FORMATS = ("hf", "gguf", "ollama")
STAGES = 4  # prepare, convert, describe, publish
SPACE_MARGIN = 64 << 20  # tokenizer and config files beside the weights
# Exported files are for other people and other machines: readable by all (transformers writes weights 0600).
FILE_MODE, DIR_MODE = 0o644, 0o755
BASE_FROM_ADAPTER = "../base"  # adapter/adapter_config.json's base: the copy beside it, wherever the folder goes


def _copy_tree(src: Path, dst: Path) -> None:
    # Real copies, never hard links: the export must survive whatever happens to the workspace.
    shutil.copytree(src, dst, copy_function=shutil.copy2,
                    ignore=shutil.ignore_patterns(".*.tmp", ".*.tmp-*", ".*.old-*"))


def _readable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(DIR_MODE if path.is_dir() else FILE_MODE)


def _point_at_base(adapter_dir: Path) -> None:
    """The exported adapter names the exported base, not a folder of the workspace it came from."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = BASE_FROM_ADAPTER
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _out(to: Path) -> tuple[Path, Path]:
    to = to.expanduser().absolute()
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise LifecycleError(f"{to} exists and is not empty; export into a new folder")
    to.parent.mkdir(parents=True, exist_ok=True)
    return to, to.parent / f".{to.name}.tmp"


def _redact_records(folder: Path) -> None:
    """An adapter or model published before secrets were redacted carries them in its job.json: not into an
    export."""
    for record in folder.rglob(ADAPTER_RECORD):
        atomic_write_json(record, redacted(json.loads(record.read_text(encoding="utf-8"))))


def _publish(tmp: Path, to: Path) -> None:
    if to.exists():
        to.rmdir()  # empty, checked above: the rename needs the name free
    publish_dir(tmp, to)


class _Export:
    """One export: the target, what it is, and the temporary folder it is written into."""

    def __init__(self, target: Target, config: Config, tmp: Path, to: Path, report: ProgressFn) -> None:
        self.target, self.config, self.tmp, self.to, self.report = target, config, tmp, to, report
        self.adapter = read_adapter(target.adapter or target.model) if target.kind == "adapter" else None
        self.base = read_version(target.model) or root_record(target.model, str(target.model), with_hash=False)
        self.meta = self._record()

    def _record(self) -> dict[str, Any]:
        target, adapter = self.target, self.adapter
        if target.version is not None:
            return {"kind": "version", "version": target.version.model_dump(mode="json")}
        base = {"base": self.base.model_dump(mode="json")}
        if adapter is not None:
            return {"kind": "model" if not adapter.is_peft else "adapter", "job": redacted(adapter.info), **base}
        checkpoint = {"label": target.label, "path": str(target.checkpoint), "line_step": target.step,
                      "method": target.method}
        return {"kind": "checkpoint", "checkpoint": checkpoint, **base}

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

    def card(self, shape: str, how: str, title: str | None = None, library: str | None = None) -> str:
        """The model card: `shape` is what the folder holds (adapter, merged, model, or whole for a version)."""
        target, adapter, how = self.target, self.adapter, how.format(path=self.to, tokenizer="adapter")
        if target.version is not None:
            return version_card(target.version, how, title, library or "transformers")
        if adapter is not None:
            kind = "model" if not adapter.is_peft else shape
            return job_card(adapter, kind, self.base, how, title, library)
        return checkpoint_card(target.label, target.step, target.method, self.base, how, title,
                               library or ("peft" if shape == "adapter" else "transformers"))

    def write_meta(self, card: str, extra: dict[str, Any]) -> None:
        meta = {**self.meta, **extra, "exported": now_text(), "folder": str(self.to)}
        atomic_write_json(self.tmp / METADATA, json.loads(json.dumps(meta, default=str)))
        (self.tmp / README).write_text(card, encoding="utf-8")


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
        job.write_meta(job.card("whole", LOAD_MODEL), {"format": "hf"})
        return
    if merged:
        job.need_space(1)
        job.merged_into(tmp)
        title = None if job.adapter is not None else f"{target.model.name} with {target.label} merged in"
        job.write_meta(job.card("merged", LOAD_MODEL, title), {"format": "hf", "kind": "merged",
                                                               "from": job.meta["kind"]})
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
    _point_at_base(tmp / "adapter")
    job.report("copying the base model", 2, STAGES)
    _copy_tree(target.model, tmp / "base")
    # The adapter's tokenizer has the template training used; an adapter from before it carried one has none.
    how = LOAD_ADAPTER if (tmp / "adapter" / "tokenizer_config.json").exists() else \
        LOAD_ADAPTER.replace("{tokenizer}", "base")
    job.write_meta(job.card("adapter", how), {"format": "hf"})


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
    converter.convert(source, gguf, gguf_type, lambda tensor: job.report(f"converting {tensor}", 2, STAGES),
                      name=job.to.name)
    remove_tree(work)
    remove_tree(tmp / ".staging")
    job.report("hashing", 3, STAGES)
    extra: dict[str, Any] = {
        "format": fmt, "kind": "gguf", "from": job.meta["kind"], "type": gguf_type, "chat_template": template,
        "gguf": {"file": ollama.GGUF_FILE, "bytes": gguf.stat().st_size, "sha256": sha256_file(gguf)},
        "converter": {"package": converter.PACKAGE, "version": converter.VERSION, "sha256": converter.SHA256,
                      "script": converter.SCRIPT},
    }
    how = LOAD_GGUF
    if match is not None:
        note = f"finetuned export of {target.label} ({gguf_type}), {now_text()}"
        (tmp / MODELFILE).write_text(ollama.modelfile(match, tokenizer.eos_token or "", note), encoding="utf-8")
        extra["ollama"] = {"template_family": match.family.name, "system": match.system}
        how = LOAD_OLLAMA
    merged = "" if job.whole else ", merged into its base,"
    title = f"{target.label}{merged} as GGUF ({gguf_type})"
    job.write_meta(job.card("merged", how, title, "gguf"), extra)


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
        _redact_records(tmp)
        _readable(tmp)
        _publish(tmp, to)
    finally:
        remove_tree(tmp)
    return to

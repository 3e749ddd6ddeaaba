"""Export: a self-contained model folder to load elsewhere, with a README.txt saying what it is.

A version is copied as it is. A job's adapter is exported with a copy of its
base beside it (`adapter/` + `base/`), or merged into one model (`--merged`).
The folder is written under a temporary name and renamed when whole; an
existing non-empty folder is never written into.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from finetuned import disk
from finetuned.config import redacted
from finetuned.fsio import atomic_write_json, publish_dir, remove_tree
from finetuned.lifecycle.consolidate import ProgressFn, merge_into, no_progress
from finetuned.lifecycle.errors import LifecycleError, require_space
from finetuned.lifecycle.records import Adapter, read_adapter
from finetuned.lifecycle.versions import Version, ensure_recorded, find, model_dtype
from finetuned.queue.job import now_text
from finetuned.workspace import ADAPTER_RECORD, Workspace

METADATA = "finetuned.json"
README = "README.txt"

_LOAD_MODEL = """    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained("{path}")
    tokenizer = AutoTokenizer.from_pretrained("{path}")
"""
_LOAD_ADAPTER = """    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained("{path}/base")
    model = PeftModel.from_pretrained(base, "{path}/adapter")
    tokenizer = AutoTokenizer.from_pretrained("{path}/base")
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


def _target(to: Path) -> tuple[Path, Path]:
    to = to.expanduser().absolute()
    if to.exists() and (not to.is_dir() or any(to.iterdir())):
        raise LifecycleError(f"{to} exists and is not empty; export into a new folder")
    to.parent.mkdir(parents=True, exist_ok=True)
    return to, to.parent / f".{to.name}.tmp"


def _publish(tmp: Path, to: Path) -> None:
    if to.exists():
        to.rmdir()  # empty, checked above: the rename needs the name free
    publish_dir(tmp, to)


def export(ws: Workspace, ref: str, to: Path, merged: bool = False, progress: ProgressFn | None = None) -> Path:
    """Export a job's adapter (JOB_ID) or a version (`tiny-v2`, `v2`) to `to`; returns the folder."""
    report = progress or no_progress
    config = ws.load_config()
    adapter = read_adapter(ws.adapter_dir(ref)) if ref and "/" not in ref else None
    to, tmp = _target(to)
    remove_tree(tmp)
    try:
        if adapter is None:
            version = find(ws, ref, config.base_model)
            if not version.recorded:
                version = ensure_recorded(ws, version.base_model)
            assert version.path is not None
            require_space(to.parent, disk.tree_bytes(version.path), config.lifecycle.min_free_gb,
                               f"export {version.id}")
            report(f"copying {version.id}", 1, 2)
            _copy_tree(version.path, tmp)
            _write_meta(tmp, to, f"model version {version.id}", _version_details(version), _LOAD_MODEL,
                        {"kind": "version", "version": version.model_dump(mode="json")})
        else:
            base = ensure_recorded(ws, adapter.base_model)
            assert base.path is not None
            _export_job(ws, adapter, base, tmp, to, merged, report, config.lifecycle.min_free_gb)
        report("publishing", 2, 2)
        _publish(tmp, to)
    finally:
        remove_tree(tmp)
    return to


def _export_job(ws: Workspace, adapter: Adapter, base: Version, tmp: Path, to: Path, merged: bool,
                report: ProgressFn, min_free_gb: float) -> None:
    assert base.path is not None
    meta: dict[str, Any] = {"kind": "", "job": redacted(adapter.info), "base": base.model_dump(mode="json")}
    if not adapter.is_peft:  # a full fine-tune published a whole model: it is its own export
        require_space(to.parent, disk.tree_bytes(adapter.path), min_free_gb, f"export job {adapter.job_id}")
        report("copying the fine-tuned model", 1, 2)
        _copy_tree(adapter.path, tmp)
        _redact_record(tmp)
        meta["kind"] = "model"
        _write_meta(tmp, to, f"the model fine-tuned by job {adapter.job_id}", _job_details(adapter), _LOAD_MODEL,
                    meta)
        return
    if merged:
        require_space(to.parent, disk.model_bytes(base.path) + (64 << 20), min_free_gb,
                           f"export job {adapter.job_id} merged")
        tmp.mkdir(parents=True)
        merge_into(base.path, adapter, tmp, model_dtype(base.path), report)
        meta["kind"] = "merged"
        _write_meta(tmp, to, f"{base.id} with the adapter of job {adapter.job_id} merged in",
                    _job_details(adapter), _LOAD_MODEL, meta)
        return
    need = disk.tree_bytes(base.path) + disk.tree_bytes(adapter.path)
    require_space(to.parent, need, min_free_gb, f"export job {adapter.job_id}")
    tmp.mkdir(parents=True)
    report("copying the adapter", 1, 2)
    _copy_tree(adapter.path, tmp / "adapter")
    _redact_record(tmp / "adapter")
    report("copying the base model", 1, 2)
    _copy_tree(base.path, tmp / "base")
    meta["kind"] = "adapter"
    _write_meta(tmp, to, f"the LoRA adapter of job {adapter.job_id} (adapter/) and its base {base.id} (base/)",
                _job_details(adapter), _LOAD_ADAPTER, meta)


def _redact_record(folder: Path) -> None:
    """An adapter published before secrets were redacted carries them in its job.json: not into an export."""
    record = folder / ADAPTER_RECORD
    if record.exists():
        atomic_write_json(record, redacted(json.loads(record.read_text(encoding="utf-8"))))


def _write_meta(tmp: Path, to: Path, what: str, details: list[str], load: str, meta: dict[str, Any]) -> None:
    meta = {**meta, "exported": now_text(), "folder": str(to)}
    atomic_write_json(tmp / METADATA, json.loads(json.dumps(meta, default=str)))
    (tmp / README).write_text(_readme(what, details, load, to), encoding="utf-8")

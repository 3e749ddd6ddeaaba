"""Export: a self-contained model folder to load elsewhere, with a model card (README.md) saying what it is.

A version is copied as it is. A job's adapter is exported with a copy of its
base beside it (`adapter/` + `base/`, the adapter naming `../base` as its base),
or merged into one model (`--merged`). Every file is readable by all (0644). The
folder is written under a temporary name and renamed when whole; an existing
non-empty folder is never written into.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from finetuned import disk
from finetuned.fsio import atomic_write_json, publish_dir, remove_tree
from finetuned.lifecycle.consolidate import ProgressFn, merge_into, no_progress
from finetuned.lifecycle.errors import LifecycleError, require_space
from finetuned.lifecycle.modelcard import METADATA, README, job_card, version_card
from finetuned.lifecycle.records import Adapter, read_adapter
from finetuned.lifecycle.versions import Version, ensure_recorded, find, model_dtype
from finetuned.queue.job import now_text
from finetuned.workspace import Workspace

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
            _write_meta(tmp, to, version_card(version, str(to)),
                        {"kind": "version", "version": version.model_dump(mode="json")})
        else:
            base = ensure_recorded(ws, adapter.base_model)
            assert base.path is not None
            _export_job(ws, adapter, base, tmp, to, merged, report, config.lifecycle.min_free_gb)
        report("publishing", 2, 2)
        _readable(tmp)
        _publish(tmp, to)
    finally:
        remove_tree(tmp)
    return to


def _export_job(ws: Workspace, adapter: Adapter, base: Version, tmp: Path, to: Path, merged: bool,
                report: ProgressFn, min_free_gb: float) -> None:
    assert base.path is not None
    meta: dict[str, Any] = {"kind": "", "job": adapter.info, "base": base.model_dump(mode="json")}
    if not adapter.is_peft:  # a full fine-tune published a whole model: it is its own export
        require_space(to.parent, disk.tree_bytes(adapter.path), min_free_gb, f"export job {adapter.job_id}")
        report("copying the fine-tuned model", 1, 2)
        _copy_tree(adapter.path, tmp)
        meta["kind"] = "model"
        _write_meta(tmp, to, job_card(adapter, "model", base, str(to)), meta)
        return
    if merged:
        require_space(to.parent, disk.model_bytes(base.path) + (64 << 20), min_free_gb,
                           f"export job {adapter.job_id} merged")
        tmp.mkdir(parents=True)
        merge_into(base.path, adapter, tmp, model_dtype(base.path), report)
        meta["kind"] = "merged"
        _write_meta(tmp, to, job_card(adapter, "merged", base, str(to)), meta)
        return
    need = disk.tree_bytes(base.path) + disk.tree_bytes(adapter.path)
    require_space(to.parent, need, min_free_gb, f"export job {adapter.job_id}")
    tmp.mkdir(parents=True)
    report("copying the adapter", 1, 2)
    _copy_tree(adapter.path, tmp / "adapter")
    _point_at_base(tmp / "adapter")
    report("copying the base model", 1, 2)
    _copy_tree(base.path, tmp / "base")
    meta["kind"] = "adapter"
    _write_meta(tmp, to, job_card(adapter, "adapter", base, str(to)), meta)


def _write_meta(tmp: Path, to: Path, card: str, meta: dict[str, Any]) -> None:
    meta = {**meta, "exported": now_text(), "folder": str(to)}
    atomic_write_json(tmp / METADATA, json.loads(json.dumps(meta, default=str)))
    (tmp / README).write_text(card, encoding="utf-8")

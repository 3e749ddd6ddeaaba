"""Consolidation: merge an adapter into its base and publish the next version, `models/base/NAME-vN/`.

The merge runs in float32 on the CPU (`PeftModel.merge_and_unload`), whatever
the training device, and is saved in the base's own dtype. The folder is
written as `.NAME-vN.tmp`, hashed, given its `version.json`, fsynced and
renamed: a version is complete or absent, and an existing one is never
overwritten. By default the new version becomes current (`line.switch`),
unless that would drop training from the line (the adapter is not the line's newest on the
current base).
"""

from __future__ import annotations

import gc
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from finetuned import checkpoints, disk
from finetuned.config import ConfigError
from finetuned.fsio import publish_dir, remove_tree
from finetuned.lifecycle import gate
from finetuned.lifecycle.errors import LifecycleError, UnfinishedWork, require_space
from finetuned.lifecycle.gate import GateRefused
from finetuned.lifecycle.history import append_history, line_started, log_event, read_history
from finetuned.lifecycle.line import lifecycle_lock, refuse_if_unfinished, switch
from finetuned.lifecycle.records import Adapter, data_entry, get_adapter, list_adapters, read_jobs
from finetuned.lifecycle.versions import (
    Version,
    ensure_recorded,
    list_versions,
    model_dtype,
    next_id,
    write_version,
)
from finetuned.models.loading import weights_hash
from finetuned.workspace import ADAPTER_RECORD, Workspace

log = logging.getLogger(__name__)

ProgressFn = Callable[[str, int, int], None]  # (what happens now, stages done, stages in all)
STAGES = 6
# Files a model folder holds that save_pretrained writes itself, or that belong to one folder only.
_NOT_EXTRAS = ("config.json", "generation_config.json", "version.json", ADAPTER_RECORD, "adapter_config.json",
               "model.safetensors.index.json", "pytorch_model.bin.index.json", "README.txt", "README.md",
               "finetuned.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
SPACE_MARGIN = 64 << 20  # tokenizer and config files beside the weights


@dataclass
class Consolidation:
    version: Version
    switched: bool
    message: str  # one line for the user: what was written and whether it is current
    refused: bool = False  # the gate kept it from becoming current: a suite fell too far


def no_progress(_what: str, _done: int, _total: int) -> None:
    return None


def pick_adapter(ws: Workspace, base_model: str) -> Adapter:
    """The line's latest: the newest adapter trained on the current base since it became current."""
    since = line_started(ws) or 0.0
    candidates = [a for a in list_adapters(ws) if a.base_model == base_model and a.finished > since]
    if not candidates:
        raise LifecycleError(f"no adapter has been trained on the current base ({base_model}) since it became "
                             "current; name one: finetuned consolidate JOB_ID")
    # In continuous mode the newest adapter carries the whole line; the step counter orders it.
    return max(candidates, key=lambda a: (a.line_step if a.mode == "continuous" else 0, a.finished))


def contributors(ws: Workspace, adapter: Adapter) -> list[dict[str, Any]]:
    """Every job whose training is in this adapter, oldest first, with its data file and sha256."""
    jobs = read_jobs(ws)
    if adapter.mode != "continuous":
        return [data_entry(adapter, jobs.get(adapter.job_id), adapter.job_id)]
    # The line on a base starts afresh at each switch; its jobs are those finished since, up to this one.
    switches = [float(e["unix"]) for e in read_history(ws) if e.get("action") in ("use", "rollback")]
    since = max((t for t in switches if t < adapter.finished), default=0.0)
    chain = [a for a in list_adapters(ws)
             if a.base_model == adapter.base_model and a.mode == "continuous" and a.method == adapter.method
             and since < a.finished <= adapter.finished and a.line_step <= adapter.line_step]
    chain.sort(key=lambda a: (a.line_step, a.finished))
    entries = [data_entry(a, jobs.get(a.job_id), a.job_id) for a in chain]
    for job in jobs.values():  # a preempted job's steps so far may sit under a later job's adapter
        last = checkpoints.latest(ws.job_checkpoints(job.id)) if job.status.active else None
        if last is None or last[0].base_model != adapter.base_model or last[0].line_step > adapter.line_step:
            continue
        if since < last[1].stat().st_mtime <= adapter.finished:
            entry = data_entry(None, job, job.id)
            entry.update(steps=last[0].step, tokens=last[0].tokens, partial=True)
            entries.append(entry)
    return entries


def _copy_extras(source: Path, out: Path, skip: tuple[str, ...] = ()) -> None:
    """The tokenizer and chat template, byte for byte, beside the weights save_pretrained wrote."""
    for item in source.iterdir():
        if not item.is_file() or item.name in _NOT_EXTRAS + skip or item.name.startswith("."):
            continue
        if item.suffix in _WEIGHT_SUFFIXES or item.name.startswith("adapter_") or (out / item.name).exists():
            continue
        shutil.copy2(item, out / item.name)


def merge_into(base_dir: Path, adapter: Adapter, out: Path, dtype: str | None,
               report: ProgressFn = no_progress, stage: int = 1) -> None:
    """Write base + adapter, merged, as a plain model folder (a full fine-tune's model is saved as it is)."""
    import torch
    from transformers import AutoModelForCausalLM

    report("loading the base model", stage, STAGES)
    if adapter.is_peft:
        from peft import PeftModel

        model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
        report("applying the adapter", stage + 1, STAGES)
        model = PeftModel.from_pretrained(model, str(adapter.path)).merge_and_unload()
        sources = [adapter.path, base_dir]  # the adapter's tokenizer first: it has the template training used
    else:
        model = AutoModelForCausalLM.from_pretrained(str(adapter.path), dtype=torch.float32)
        report("reading the fine-tuned model", stage + 1, STAGES)
        sources = [adapter.path, base_dir]
    report("saving the merged weights", stage + 2, STAGES)
    target = getattr(torch, dtype, None) if dtype in ("float32", "float16", "bfloat16") else torch.float32
    model.to(target)
    model.save_pretrained(str(out))
    for source in sources:
        # README.md in an adapter is peft's generated model card, not the model's
        _copy_extras(source, out, skip=("README.md",) if source == adapter.path and adapter.is_peft else ())
    del model
    gc.collect()


def _parent_of(ws: Workspace, adapter: Adapter) -> Version:
    """The version the adapter was trained on: its base_model, or the folder it recorded if that moved."""
    try:
        return ensure_recorded(ws, adapter.base_model)
    except LifecycleError:
        base_path = adapter.info.get("base_path")
        if base_path and (Path(base_path) / "config.json").exists():
            return ensure_recorded(ws, str(base_path))
        raise


def _already_merged(ws: Workspace, adapter: Adapter, parent: Version) -> Version | None:
    for version in list_versions(ws):
        if version.parent == parent.id and any(a.get("job_id") == adapter.job_id for a in version.adapters):
            return version
    return None


def _not_the_head(ws: Workspace, adapter: Adapter, current_base: str, new_id: str) -> str | None:
    """Why making the new version current would drop training from the line, or None."""
    if adapter.base_model != current_base:
        return (f"job {adapter.job_id} was trained on {adapter.base_model}, not on the current base "
                f"{current_base} (finetuned use {new_id} switches anyway)")
    newer = [a for a in list_adapters(ws) if a.base_model == adapter.base_model and a.finished > adapter.finished]
    if newer:
        return (f"job {newer[-1].job_id} trained on the same base after job {adapter.job_id} and is not in "
                f"{new_id} (finetuned use {new_id} switches anyway)")
    return None


def consolidate(ws: Workspace, job_id: str | None = None, note: str = "", progress: ProgressFn | None = None,
                use: bool = True, force: bool = False) -> Consolidation:
    """Merge an adapter (default: the line's latest) into its base as the next version; make it current."""
    report = progress or no_progress
    try:
        config = ws.load_config()
    except ConfigError as exc:
        raise LifecycleError(exc.line()) from None
    with lifecycle_lock(ws, "consolidate"):
        if use and not force:  # say it before minutes of merging, not after
            refuse_if_unfinished(ws, config.base_model, "consolidate and switch", "Let it finish, or write the "
                                 "version without switching (--no-use) and switch later (finetuned use)")
        report("checking", 0, STAGES)
        adapter = get_adapter(ws, job_id) if job_id else pick_adapter(ws, config.base_model)
        if not adapter.base_model:
            raise LifecycleError(f"job {adapter.job_id}'s job.json does not say which base it was trained on")
        parent = _parent_of(ws, adapter)
        assert parent.path is not None
        found_hash = weights_hash(parent.path)
        if adapter.base_hash and adapter.base_hash != found_hash:
            raise LifecycleError(f"the weights of {parent.id} changed since job {adapter.job_id} trained on them "
                                 f"(hash {found_hash[:12]}, the job saw {adapter.base_hash[:12]}); refusing to merge")
        done = _already_merged(ws, adapter, parent)
        if done is not None and not force:
            raise LifecycleError(f"job {adapter.job_id} is already merged into {done.id} "
                                 f"(to train on it: finetuned use {done.id})")
        source = parent.path if adapter.is_peft else adapter.path
        new_id, number = next_id(ws, parent.name)
        require_space(ws.base_models, disk.model_bytes(source) + SPACE_MARGIN,
                           config.lifecycle.min_free_gb, f"write {new_id}")
        jobs = contributors(ws, adapter)
        steps = adapter.line_step if adapter.mode == "continuous" else adapter.steps
        tokens = sum(int(j.get("tokens") or 0) for j in jobs)
        version = Version(
            id=new_id, name=parent.name, version=number, parent=parent.id, parent_hash=found_hash,
            base_model=new_id, note=note, dtype=model_dtype(parent.path) or "float32",
            adapters=[{"job_id": adapter.job_id, "method": adapter.method, "mode": adapter.mode,
                       "path": f"models/adapters/{adapter.path.name}", "steps": adapter.steps,
                       "line_step": adapter.line_step, "tokens": adapter.tokens, "base_hash": adapter.base_hash}],
            jobs=jobs, data=[{"file": j["file"], "sha256": j["sha256"], "job_id": j["job_id"]} for j in jobs],
            steps=steps, tokens=tokens, total_steps=parent.total_steps + steps,
            total_tokens=parent.total_tokens + tokens,
        )
        final = ws.base_models / new_id
        tmp = ws.base_models / f".{new_id}.tmp"
        remove_tree(tmp)
        tmp.mkdir(parents=True)
        try:
            merge_into(parent.path, adapter, tmp, version.dtype, report, stage=1)
            report("hashing the weights", 4, STAGES)
            version.weights_hash = weights_hash(tmp)
            write_version(tmp, version)
            report("publishing", 5, STAGES)
            if final.exists():  # next_id chose a free name under the lock: this is someone else's folder
                raise LifecycleError(f"{final} appeared while merging; nothing was overwritten")
            publish_dir(tmp, final)
        finally:
            remove_tree(tmp)
        version.path = final
        append_history(ws, {"action": "consolidate", "version": new_id, "parent": parent.id,
                            "job_id": adapter.job_id, "steps": steps, "note": note})
        log_event(ws, f"consolidate: job {adapter.job_id} merged into {parent.id} -> {new_id} "
                      f"({steps} steps, weights {version.weights_hash[:12]})" + (f"; {note}" if note else ""))
        switched, refused, message = False, False, f"{new_id} written (not current: --no-use)"
        if use:
            current_base = ws.load_config().base_model  # as it is now: the merge took a while
            behind = _not_the_head(ws, adapter, current_base, new_id)
            try:
                if behind and not force:
                    raise UnfinishedWork(behind)
                if not force:
                    report("scoring on the suites in evals/", 5, STAGES)
                    gate.check(ws, config, version, ensure_recorded(ws, current_base), "consolidate")
                switch(ws, version, "use", force, note=f"after consolidating job {adapter.job_id}")
                switched, message = True, f"{new_id} written and now current"
            except GateRefused as exc:
                refused, message = True, f"{new_id} written but not made current: {exc}"
                log_event(ws, f"consolidate: {message}", logging.WARNING)
            except UnfinishedWork as exc:
                message = f"{new_id} written but not made current: {exc}"
                log_event(ws, f"consolidate: {message}", logging.WARNING)
        report("done", STAGES, STAGES)
        return Consolidation(version, switched, message, refused)

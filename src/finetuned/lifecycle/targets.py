"""What `eval`, `chat` and `export` point at: a version, a job's adapter, the line's newest checkpoint.

A target names the model folder to load and, for LoRA, what goes on top of it:
a published adapter folder, or a checkpoint's trainable weights. Loading is
always on the CPU in float32 unless a device is asked for: these commands run
beside a daemon that may hold the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from finetuned import checkpoints
from finetuned.checkpoints import TrainingProgress
from finetuned.config import Config, ConfigError
from finetuned.lifecycle.errors import LifecycleError
from finetuned.lifecycle.history import line_exclusions
from finetuned.lifecycle.records import Adapter, read_adapter, read_jobs
from finetuned.lifecycle.versions import Version, ensure_recorded, find
from finetuned.workspace import Workspace

if TYPE_CHECKING:
    import torch

Kind = Literal["version", "adapter", "checkpoint"]
CURRENT = ("base", "current")  # what `eval base` and `chat current` call the current version
NEWEST = "latest"  # the line's newest checkpoint


@dataclass(frozen=True)
class Target:
    kind: Kind
    label: str  # how messages name it: "tiny-v2", "job 20251116_014530", "checkpoint 40 of job ..."
    model: Path  # a whole model folder: the version, the adapter's base, or a full fine-tune
    adapter: Path | None = None  # a published PEFT adapter on top of `model`
    checkpoint: Path | None = None  # a checkpoint whose trainable weights go on top of `model`
    method: str = "lora"
    step: int | None = None  # the line step a checkpoint or adapter reached
    version: Version | None = None


def _config(ws: Workspace) -> Config:
    try:
        return ws.load_config()
    except ConfigError as exc:
        raise LifecycleError(exc.line()) from None


def of_version(version: Version, ws: Workspace) -> Target:
    if not version.recorded or version.path is None:
        version = ensure_recorded(ws, version.base_model)
    assert version.path is not None
    return Target("version", version.id, version.path, version=version, step=version.total_steps)


def _of_adapter(ws: Workspace, adapter: Adapter) -> Target:
    base = ensure_recorded(ws, adapter.base_model)
    assert base.path is not None
    label = f"job {adapter.job_id}"
    if not adapter.is_peft:  # a full fine-tune published a whole model
        return Target("adapter", label, adapter.path, method="full", step=adapter.line_step)
    return Target("adapter", label, base.path, adapter=adapter.path, method=adapter.method, step=adapter.line_step)


def _of_checkpoint(ws: Workspace, progress: TrainingProgress, path: Path) -> Target:
    base = ensure_recorded(ws, progress.base_model)
    assert base.path is not None
    return Target("checkpoint", f"checkpoint {progress.step} of job {progress.job_id}", base.path,
                  checkpoint=path, method=progress.method, step=progress.line_step)


def newest_checkpoint(ws: Workspace, config: Config) -> tuple[TrainingProgress, Path] | None:
    """The newest checkpoint trained on the current base: the continuous line's head, else the newest job's."""
    exclude = set(line_exclusions(ws, read_jobs(ws).values()))
    head = checkpoints.line_head(ws.checkpoints, config.base_model, config.method, exclude)
    if head is not None:
        return head
    found: list[tuple[TrainingProgress, Path]] = []
    if ws.checkpoints.is_dir():
        for job_dir in ws.checkpoints.iterdir():
            last = checkpoints.latest(job_dir) if job_dir.name not in exclude else None
            if last is not None and last[0].base_model == config.base_model:
                found.append(last)
    return max(found, key=lambda item: (item[1].stat().st_mtime, item[0].step), default=None)


def resolve(ws: Workspace, ref: str | None) -> Target:
    """`ref` as a target: a job id (its adapter), a version (`tiny-v2`, `v2`, a folder), `base`/`current`,
    `latest` (the line's newest checkpoint); None: the newest checkpoint, else the current version."""
    config = _config(ws)
    if ref is None or ref == NEWEST:
        head = newest_checkpoint(ws, config)
        if head is not None:
            return _of_checkpoint(ws, *head)
        if ref == NEWEST:
            raise LifecycleError(f"no checkpoint trained on the current base {config.base_model} yet")
        ref = CURRENT[0]
    if ref in CURRENT:
        return of_version(ensure_recorded(ws, config.base_model), ws)
    if "/" not in ref:
        adapter = read_adapter(ws.adapter_dir(ref))
        if adapter is not None:
            return _of_adapter(ws, adapter)
        job_dir = ws.checkpoints / ref
        last = checkpoints.latest(job_dir) if job_dir.is_dir() else None
        if last is not None:  # a job still training, or stopped: its newest checkpoint
            return _of_checkpoint(ws, *last)
    return of_version(find(ws, ref, config.base_model), ws)


def load(target: Target, config: Config, device: str = "cpu") -> tuple[torch.nn.Module, Any]:
    """The target's model (in eval mode) and tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM

    from finetuned.models.loading import add_lora, load_tokenizer
    from finetuned.worker.tensors import load_weights

    model: torch.nn.Module = AutoModelForCausalLM.from_pretrained(str(target.model), dtype=torch.float32).to(device)
    tokenizer_folder = target.adapter if target.adapter and (target.adapter / "tokenizer_config.json").exists() \
        else target.model
    if target.adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(target.adapter)).to(device)
    elif target.checkpoint is not None:
        weights = load_weights(target.checkpoint)
        if target.method != "full":
            model = add_lora(model, config.lora)
        missing = set(weights) - {name for name, _ in model.named_parameters()}
        if missing:
            raise LifecycleError(f"{target.label} does not fit the model the config describes "
                                 f"(e.g. {sorted(missing)[0]}): was lora changed since it trained?")
        model.load_state_dict(weights, strict=False)
    model.eval()
    return model, load_tokenizer(tokenizer_folder)


def describe(target: Target) -> str:
    """The target in a few words, with how far the line had trained: what a chat header or an answer says."""
    if target.kind == "version":
        trained = f"{target.step} steps trained" if target.step else "not trained here"
        return f"version {target.label} ({trained})"
    where = f"line step {target.step}" if target.step is not None else "step unknown"
    what = target.label if target.kind == "checkpoint" else f"the adapter of {target.label}"
    return f"{what} ({where})"

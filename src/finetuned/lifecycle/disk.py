"""Free space, checked before anything big is written, so a full disk pauses work instead of corrupting it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from finetuned.lifecycle.errors import DiskSpaceError
from finetuned.worker import checkpoint

GB = 2**30
# Weights + AdamW's two moments, all float32: what a checkpoint holds per trainable parameter.
CHECKPOINT_BYTES_PER_PARAM = 3 * 4
CHECKPOINT_OVERHEAD = 1 << 20  # RNG states, state.json, safetensors header


def _existing(path: Path) -> Path:
    """The path, or its nearest existing ancestor: what will hold it once created."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(_existing(path)).free


def free_gb(path: Path) -> float:
    return free_bytes(path) / GB


def enough_space(path: Path, need_bytes: int, min_free_gb: float) -> bool:
    """Whether writing `need_bytes` under `path` still leaves `min_free_gb` free."""
    return free_bytes(path) - need_bytes >= min_free_gb * GB


def require_space(path: Path, need_bytes: int, min_free_gb: float, what: str) -> None:
    """Raise a DiskSpaceError that says how much is needed, how much is free, and what to do."""
    if enough_space(path, need_bytes, min_free_gb):
        return
    raise DiskSpaceError(
        f"not enough disk space to {what}: it needs {need_bytes / GB:.2f} GB and lifecycle.min_free_gb "
        f"keeps {min_free_gb:g} GB free, but only {free_gb(path):.2f} GB is free on {_existing(path)}; "
        "free space (finetuned gc --dry-run shows what retention can remove) and try again")


def tree_bytes(path: Path) -> int:
    """Bytes of the files under `path` (links not followed)."""
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except FileNotFoundError:  # removed while we counted
                continue
    return total


def expected_checkpoint_bytes(job_dir: Path, trainable_params: int | None = None) -> int:
    """What the next checkpoint of this job will take: its newest one's size, or an estimate.

    Without a checkpoint of its own, the newest checkpoint of any other job (same model line, most
    likely) stands in; without any, `trainable_params` gives weights plus AdamW's moments in float32.
    """
    own = checkpoint.latest(job_dir)
    if own is not None:
        return tree_bytes(own[1])
    if job_dir.parent.is_dir():
        others = [found for other in job_dir.parent.iterdir() if other.is_dir()
                  for found in [checkpoint.latest(other)] if found is not None]
        if others:
            newest = max(others, key=lambda item: item[1].stat().st_mtime)
            return tree_bytes(newest[1])
    if trainable_params:
        return trainable_params * CHECKPOINT_BYTES_PER_PARAM + CHECKPOINT_OVERHEAD
    return CHECKPOINT_OVERHEAD


def model_bytes(folder: Path) -> int:
    """The weight files of a model folder: what a copy or a merge of it writes."""
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files)

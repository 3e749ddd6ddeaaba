"""Free space, checked before anything big is written, so a full disk pauses work instead of corrupting it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

GB = 2**30
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


def shortfall(path: Path, need_bytes: int, min_free_gb: float, what: str) -> str | None:
    """Why writing `need_bytes` under `path` must not start (how much is needed, free, and what to do), or None."""
    if enough_space(path, need_bytes, min_free_gb):
        return None
    return (f"not enough disk space to {what}: it needs {need_bytes / GB:.2f} GB and lifecycle.min_free_gb "
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


def checkpoint_bytes(weight_bytes: int) -> int:
    """What a checkpoint of these trainable weights takes: the weights and AdamW's two moments, plus metadata."""
    return 3 * weight_bytes + CHECKPOINT_OVERHEAD


def model_bytes(folder: Path) -> int:
    """The weight files of a model folder: what a copy or a merge of it writes."""
    files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    return sum(f.stat().st_size for f in files)

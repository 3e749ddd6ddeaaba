"""Crash-safe file primitives: every state file goes through here.

A reader must never see half a file, even after SIGKILL or a power cut, so
writes go to a temporary name in the same folder, are flushed and fsynced,
then renamed over the target; the folder is fsynced so the rename itself is
durable.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

# fsync makes a write survive a power cut. Only a test about logic, not durability, turns it off.
DURABLE = True


def fsync_dir(path: Path) -> None:
    if not DURABLE:
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        if DURABLE:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, ensure_ascii=False) + "\n").encode())


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def durable_rename(src: Path, dst: Path) -> None:
    """Rename within one file system and make both folders' entries durable."""
    os.replace(src, dst)
    fsync_dir(Path(dst).parent)
    if Path(src).parent != Path(dst).parent:
        fsync_dir(Path(src).parent)


def fsync_tree(root: Path) -> None:
    """fsync every file and folder under root (a checkpoint before its final rename)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def publish_dir(tmp: Path, final: Path) -> None:
    """Make a fully written folder appear under its final name in one step."""
    fsync_tree(tmp)
    os.rename(tmp, final)
    fsync_dir(final.parent)


def remove_file(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def unique_path(folder: Path, name: str, tag: str) -> Path:
    """`folder/name`, or `folder/stem.TAG.ext` when that name is taken, never overwriting."""
    candidate = folder / name
    if not candidate.exists() and not candidate.is_symlink():
        return candidate
    stem, dot, ext = name.partition(".")
    n = 1
    while True:
        suffix = tag if n == 1 else f"{tag}-{n}"
        candidate = folder / (f"{stem}.{suffix}{dot}{ext}")
        if not candidate.exists() and not candidate.is_symlink():
            return candidate
        n += 1

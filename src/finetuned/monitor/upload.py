"""Putting an uploaded file into the inbox the way a careful person would.

The body is streamed to a hidden `.part` name (the inbox ignores those), capped in
size, flushed to disk, then linked under its final name in one step: the daemon never
sees half a file, and an existing file is never overwritten.
"""

from __future__ import annotations

import os
import re
import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

from finetuned.fsio import fsync_dir, remove_file

EXTENSIONS = (".jsonl", ".json")
MAX_NAME = 120
_UNSAFE = re.compile(r"[^\w.+()@,=-]+")  # \w is unicode-aware: accented names stay readable


class UploadError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def safe_name(raw: str) -> str:
    """The base name only, in a harmless alphabet, not hidden, with a .jsonl or .json extension."""
    name = _UNSAFE.sub("_", unicodedata.normalize("NFC", raw.replace("\\", "/").split("/")[-1]))
    ext = next((e for e in EXTENSIONS if name.lower().endswith(e)), None)
    if ext is None:
        raise UploadError(415, f"'{raw[:80]}' is not a .jsonl or .json file")
    stem = name[: -len(ext)].strip("._ ") or "upload"  # a leading dot would hide it from the inbox forever
    return stem[: MAX_NAME - len(ext)] + ext


def _final_path(folder: Path, name: str, part: Path) -> Path:
    """Link `part` under `name`, or `stem_2.ext`, `stem_3.ext`...: a link fails rather than overwrite."""
    ext = ".jsonl" if name.endswith(".jsonl") else ".json"
    stem = name[: -len(ext)]
    for n in range(1, 10_000):
        candidate = folder / (name if n == 1 else f"{stem}_{n}{ext}")
        try:
            os.link(part, candidate)
        except FileExistsError:
            continue
        except OSError:  # a file system without hard links: check, then rename (a race we accept there)
            if candidate.exists():
                continue
            os.rename(part, candidate)
        return candidate
    raise UploadError(409, f"too many files named like {name} in {folder.name}/")


async def receive(chunks: AsyncIterator[bytes], folder: Path, raw_name: str, max_bytes: int) -> tuple[Path, int]:
    """Stream `chunks` into `folder`; returns the final path and its size."""
    name = safe_name(raw_name)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{name}.{uuid.uuid4().hex[:8]}.part"
    size = 0
    try:
        with open(part, "wb") as f:
            async for chunk in chunks:
                size += len(chunk)
                if size > max_bytes:
                    raise UploadError(413, f"the file is over the upload limit of {max_bytes / 2**20:.0f} MB "
                                           "(monitor.max_upload_mb); copy it into the inbox instead")
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size == 0:
            raise UploadError(400, "the file is empty")
        final = _final_path(folder, name, part)
        fsync_dir(folder)
        return final, size
    finally:
        remove_file(part)
